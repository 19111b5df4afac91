"""The omopgenerics ``summarised_result`` long format, in pydantic v2 + pandas.

A result is one long table of 13 character columns (``result_id`` is an
integer) plus a settings table keyed by ``result_id``; see
:data:`RESULT_COLUMNS` and :data:`SETTINGS_COLUMNS`.  Several keys in a
name/level pair are joined with ``" &&& "``; a pair without keys is
``"overall"``/``"overall"``.

What the R package does (omopgenerics ``R/exportSummarisedResult.R``,
``R/importSummarisedResult.R``, ``R/classSummarisedResult.R``) and what we copy:

* export binds, **suppresses**, then appends the settings as extra long rows:
  ``variable_name = "settings"``, ``variable_level = NA``, group/strata/
  additional ``"overall"``, ``estimate_name`` = setting column,
  ``estimate_value`` = its value as character, settings whose value is NA
  dropped, rows arranged by ``result_id``.  ``cdm_name`` of a settings row is
  NA unless the result_id holds several cdm_names, in which case there is one
  copy of the settings per cdm_name (a ``left_join`` in ``pivotSettings``).
* ``utils::write.csv(row.names = FALSE)``: a quoted header, character fields
  in double quotes with ``"`` doubled, ``result_id`` bare, NA written bare
  as ``NA``, ``\\n`` line ends, UTF-8.
* import reads every column as character (``result_id`` integer) with readr,
  which reads both ``NA`` and ``""`` as missing, and pivots the settings rows
  back (ignoring their ``cdm_name`` and ``estimate_type``).

Where we differ: settings are all strings and exported with estimate_type
``"character"`` (newer omopgenerics keeps settings as character too);
``""`` survives a round trip (only ``NA`` reads as missing), and rows are kept
in one canonical sorted order so that files are byte-for-byte reproducible.
The file name carries no date: the caller chooses it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import TypeAdapter

from optima_common.errors import ResultFormatError
from optima_common.fileio import write_atomic
from optima_common.result_records import OVERALL, ResultRecord, ResultSettings

SEP = " &&& "
SUPPRESSED = "-"
RESULT_COLUMNS: tuple[str, ...] = (
    "result_id", "cdm_name", "group_name", "group_level", "strata_name",
    "strata_level", "variable_name", "variable_level", "estimate_name",
    "estimate_type", "estimate_value", "additional_name", "additional_level",
)
SETTINGS_COLUMNS: tuple[str, ...] = (
    "result_id", "result_type", "package_name", "package_version", "group",
    "strata", "additional", "min_cell_count",
)
ESTIMATE_TYPES = ("integer", "numeric", "percentage", "proportion", "character", "logical", "date")
NAME_LEVEL_PAIRS = (("group_name", "group_level"), ("strata_name", "strata_level"),
                    ("additional_name", "additional_level"))
#: columns that identify one estimate (everything but its value and type)
ESTIMATE_KEY = tuple(c for c in RESULT_COLUMNS if c not in ("estimate_value", "estimate_type"))
_NULLABLE = ("variable_level", "estimate_value")
_SORT_KEY = ["result_id", "cdm_name", "group_name", "group_level", "strata_name", "strata_level",
             "additional_name", "additional_level", "variable_name", "variable_level", "estimate_name"]

def _str_col(s: pd.Series) -> pd.Series:
    """Strings with missing values as None in an object column (pandas 2 and 3 alike)."""
    if s.dtype == object and pd.api.types.infer_dtype(s, skipna=False) == "string":
        return s  # already only str, none missing (one C-level scan instead of three passes)
    out = s.astype(object)
    mask = out.notna()
    if not mask.all():
        out = out.where(mask, None)
    if mask.any():
        out.loc[mask] = out[mask].astype(str)
    return out


def _sep_count(s: pd.Series) -> np.ndarray:
    """``s.str.count(SEP)`` counted once per distinct value (names and levels repeat a lot); -1 for missing."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    per = np.fromiter((str(u).count(SEP) for u in uniques), dtype=np.int64, count=len(uniques))
    return np.where(codes >= 0, per[np.maximum(codes, 0)] if len(per) else 0, -1)


def _derive_names(data: pd.DataFrame, col: str) -> pd.Series:
    """The ``group``/``strata``/``additional`` setting: keys used, first-seen order."""
    pairs = data[["result_id", col]].drop_duplicates()
    out: dict[int, list[str]] = {}
    for rid, name in zip(pairs["result_id"], pairs[col], strict=True):  # few distinct rows
        keys = out.setdefault(int(rid), [])
        for key in str(name).split(SEP):
            if key != OVERALL and key not in keys:
                keys.append(key)
    return pd.Series({k: SEP.join(v) for k, v in out.items()}, dtype=object)


def _arrow_columns(frame: pd.DataFrame):
    """The result columns of ``frame`` as an Arrow table (``result_id`` int64, the rest text as
    dictionary columns: each distinct value converted once, a column repeats a few thousand values
    over millions of rows). Raises ``ArrowException`` for a value that is not text."""
    import pyarrow as pa

    arrays = [pa.array(frame["result_id"].to_numpy(dtype="int64"), type=pa.int64())]
    for col in RESULT_COLUMNS[1:]:
        codes, uniques = pd.factorize(frame[col].to_numpy(), use_na_sentinel=True)
        arrays.append(pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0),
                                                     pa.array(uniques, type=pa.string())))
    return pa.Table.from_arrays(arrays, names=list(RESULT_COLUMNS))


class SummarisedResult:
    """A validated ``summarised_result``: ``data`` (13 columns) + ``settings``.

    Both frames are copies kept in canonical form: columns in the standard
    order, strings as Python ``str`` (missing = NaN), rows sorted, settings extras in
    alphabetical order after the fixed ones.  Treat them as read-only.
    """

    __slots__ = ("data", "settings")

    def __init__(self, data: pd.DataFrame, settings: pd.DataFrame) -> None:
        self.data = self._normalise_data(data)
        self.settings = self._normalise_settings(settings, self.data)
        self._validate()
        self._validate_settings()

    # ---------- construction ----------
    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any] | ResultRecord],
                     settings: Iterable[Mapping[str, Any] | ResultSettings]) -> SummarisedResult:
        """Build from row dicts (validated by :class:`ResultRecord`) and settings rows."""
        try:
            rows = TypeAdapter(list[ResultRecord]).validate_python(list(records))
            sets = TypeAdapter(list[ResultSettings]).validate_python(list(settings))
        except ValueError as err:
            raise ResultFormatError(f"invalid summarised_result records: {err}") from err
        data = pd.DataFrame([r.model_dump() for r in rows], columns=list(RESULT_COLUMNS))
        set_df = pd.DataFrame([s.model_dump() for s in sets]) if sets else pd.DataFrame(columns=list(SETTINGS_COLUMNS))
        return cls(data, set_df)

    @classmethod
    def empty(cls) -> SummarisedResult:
        return cls(pd.DataFrame(columns=list(RESULT_COLUMNS)), pd.DataFrame(columns=list(SETTINGS_COLUMNS)))

    @staticmethod
    def _normalise_data(data: pd.DataFrame) -> pd.DataFrame:
        cols = list(data.columns)
        if sorted(cols) != sorted(RESULT_COLUMNS) or len(cols) != len(RESULT_COLUMNS):
            missing = sorted(set(RESULT_COLUMNS) - set(cols))
            extra = sorted(set(cols) - set(RESULT_COLUMNS))
            raise ResultFormatError(f"summarised_result needs exactly the 13 columns; missing {missing}, extra {extra}")
        out = pd.DataFrame(index=range(len(data)))
        try:
            rid = pd.to_numeric(data["result_id"].reset_index(drop=True), errors="raise")
        except (ValueError, TypeError) as err:
            raise ResultFormatError("result_id must be an integer") from err
        if rid.isna().any() or (len(rid) and (rid != rid.round()).any()):
            raise ResultFormatError("result_id must be an integer without missing values")
        out["result_id"] = rid.astype("int64")
        for col in RESULT_COLUMNS[1:]:
            out[col] = _str_col(data[col].reset_index(drop=True))
        if len(out):
            out = out.sort_values(_SORT_KEY, kind="mergesort", na_position="first").reset_index(drop=True)
        return out

    @staticmethod
    def _normalise_settings(settings: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
        for col in ("result_id", "result_type", "package_name", "package_version"):
            if col not in settings.columns:
                raise ResultFormatError(f"settings lack the column {col!r}")
        s = settings.reset_index(drop=True).copy()
        try:
            s["result_id"] = pd.to_numeric(s["result_id"], errors="raise").astype("int64")
        except (ValueError, TypeError) as err:
            raise ResultFormatError("settings result_id must be an integer") from err
        if s["result_id"].duplicated().any():
            raise ResultFormatError("settings hold more than one row for a result_id")
        for col, name_col in (("group", "group_name"), ("strata", "strata_name"), ("additional", "additional_name")):
            if col in s.columns and s[col].notna().all():
                continue  # every row says it: nothing to derive (a pass over millions of data rows saved)
            derived = s["result_id"].map(_derive_names(data, name_col)).astype(object)
            derived = derived.where(derived.notna(), "")
            s[col] = s[col].where(s[col].notna(), derived) if col in s.columns else derived
        if "min_cell_count" not in s.columns:
            s["min_cell_count"] = "0"
        s["min_cell_count"] = s["min_cell_count"].where(s["min_cell_count"].notna(), "0")
        extras = sorted(c for c in s.columns if c not in SETTINGS_COLUMNS)
        s = s[list(SETTINGS_COLUMNS) + extras]
        for col in s.columns[1:]:
            s[col] = _str_col(s[col])
        return s.sort_values("result_id", kind="mergesort").reset_index(drop=True)

    def _validate(self) -> None:
        d = self.data
        for col in RESULT_COLUMNS[1:]:
            if col not in _NULLABLE and d[col].isna().any():
                raise ResultFormatError(f"column {col!r} has missing values")
        bad_types = sorted(set(d["estimate_type"]) - set(ESTIMATE_TYPES))
        if bad_types:
            raise ResultFormatError(f"unknown estimate_type {bad_types}; allowed {list(ESTIMATE_TYPES)}")
        for name, level in NAME_LEVEL_PAIRS:
            n_names, n_levels = _sep_count(d[name]), _sep_count(d[level])
            bad = n_names != n_levels
            if bad.any():
                row = d.loc[bad].iloc[0]
                raise ResultFormatError(
                    f"{name}/{level} have different numbers of ' &&& ' parts: {row[name]!r} vs {row[level]!r}")
        dup = d.duplicated(list(ESTIMATE_KEY), keep=False)
        if dup.any():
            row = d.loc[dup].iloc[0]
            raise ResultFormatError(
                f"duplicate estimate ({int(dup.sum())} rows), e.g. result_id {row['result_id']} "
                f"{row['variable_name']!r}/{row['variable_level']!r}/{row['estimate_name']!r}")

    def _validate_settings(self) -> None:
        d, s = self.data, self.settings
        for col in ("result_type", "package_name", "package_version"):
            if s[col].isna().any():
                raise ResultFormatError(f"settings column {col!r} has missing values")
        in_data, in_set = set(d["result_id"]), set(s["result_id"])
        if in_data - in_set:
            raise ResultFormatError(f"result_id(s) {sorted(in_data - in_set)} have no settings row")
        # A settings row without data rows is allowed on purpose: it says "this analysis ran
        # and found nothing", which a reader must be able to tell from "did not run".

    # ---------- helpers ----------
    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"SummarisedResult({len(self.data)} rows, result_ids={self.result_ids})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SummarisedResult):
            return NotImplemented
        return self.data.equals(other.data) and self.settings.equals(other.settings)

    __hash__ = None  # type: ignore[assignment]

    @property
    def result_ids(self) -> list[int]:
        return [int(x) for x in self.settings["result_id"]]

    def with_data(self, data: pd.DataFrame, settings: pd.DataFrame | None = None) -> SummarisedResult:
        """A new validated result with replaced data (and settings)."""
        return SummarisedResult(data, self.settings if settings is None else settings)

    def with_suppressed(self, mask, settings: pd.DataFrame | None = None) -> SummarisedResult:
        """The same rows with the estimates where ``mask`` (one bool per row, in row order) is true
        withheld as ``"-"``; ``settings`` replaces the settings (normalised and checked as usual).

        The result equals ``with_data`` of the same frame. Only ``estimate_value`` changes, which is
        neither in the sort key nor in any check of the data, so the rows are not normalised and
        checked again (0.3-0.4 s each time for the 126k rows of a 1M-person release)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self.data),):
            raise ValueError(f"mask has shape {mask.shape}, expected ({len(self.data)},)")
        data = self.data.copy()
        values = data["estimate_value"].to_numpy(dtype=object, copy=True)
        values[mask] = SUPPRESSED
        data["estimate_value"] = values
        out = object.__new__(SummarisedResult)
        out.data = data
        out.settings = self.settings if settings is None else self._normalise_settings(settings, data)
        out._validate_settings()
        return out

    @classmethod
    def bind(cls, *results: SummarisedResult) -> SummarisedResult:
        """Concatenate results; result_ids are renumbered 1..n in argument order.

        omopgenerics ``bind`` also renumbers, and in addition merges result_ids
        whose settings are identical; we keep every input's ids distinct.
        """
        return bind_frames([(r.data, r.settings) for r in results])

    # ---------- CSV ----------
    def to_long(self) -> pd.DataFrame:
        """Data rows followed by settings rows, as ``exportSummarisedResult`` lays them out."""
        return pd.concat([self.data, self._settings_rows()], ignore_index=True)

    def _settings_rows(self) -> pd.DataFrame:
        """The settings as long rows (the tail of :meth:`to_long`)."""
        s = self.settings.melt(id_vars="result_id", var_name="estimate_name", value_name="estimate_value")
        s["_order"] = s["estimate_name"].map({c: i for i, c in enumerate(self.settings.columns)})
        s = s[s["estimate_value"].notna()].sort_values(["result_id", "_order"], kind="mergesort")
        cdm = self.data[["result_id", "cdm_name"]].drop_duplicates()
        cdm = cdm[cdm["result_id"].duplicated(keep=False)]  # NA unless several cdm_names
        s = s.merge(cdm, on="result_id", how="left", sort=False)
        s = s.assign(group_name=OVERALL, group_level=OVERALL, strata_name=OVERALL, strata_level=OVERALL,
                     variable_name="settings", variable_level=None, estimate_type="character",
                     additional_name=OVERALL, additional_level=OVERALL)
        s["cdm_name"] = _str_col(s["cdm_name"])
        return s[list(RESULT_COLUMNS)]

    def to_csv_text(self) -> str:
        """The omopgenerics CSV layout as text (settings as extra long rows; NA for missing)."""
        long = self.to_long()
        # each distinct value quoted once (columns repeat a few thousand values over millions of rows)
        codes, ids = pd.factorize(long["result_id"].astype("int64"))
        cols = [np.array([str(int(i)) for i in ids], dtype=object)[codes]]
        for col in RESULT_COLUMNS[1:]:
            codes, uniques = pd.factorize(long[col], use_na_sentinel=True)
            quoted = ['"' + str(u).replace('"', '""') + '"' for u in uniques] + ["NA"]  # code -1: missing
            cols.append(np.array(quoted, dtype=object)[codes])
        header = ",".join(f'"{c}"' for c in RESULT_COLUMNS)
        return "\n".join([header, *map(",".join, zip(*(c.tolist() for c in cols), strict=True))]) + "\n"

    def to_csv_bytes(self) -> bytes:
        """:meth:`to_csv_text` as UTF-8, written by Arrow's CSV writer (the same bytes, ~2x faster: a
        20-site network CSV, 727 MB, 6.5 -> 3.8 CPU s). Arrow quotes every string and writes a
        missing value as bare ``NA``, as ``write.csv`` does; text Arrow cannot take (a lone
        surrogate) goes the :meth:`to_csv_text` way."""
        return self.csv_bytes_later()()

    def csv_bytes_later(self) -> Callable[[], bytes]:
        """:meth:`to_csv_bytes` in two steps: the Arrow columns now (Python work, under the GIL), and
        a function that writes them as the CSV bytes (Arrow's writer, which releases the GIL: call
        it in a thread while this one goes on)."""
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        def as_text() -> bytes:
            return self.to_csv_text().encode("utf-8")
        try:
            parts = [p for p in (self.data, self._settings_rows()) if len(p)] or [self.data]
            table = pa.concat_tables([_arrow_columns(p) for p in parts])
        except (pa.ArrowException, UnicodeError):
            return as_text

        def write() -> bytes:
            out = io.BytesIO()
            try:
                pa_csv.write_csv(table, out, pa_csv.WriteOptions(null_string="NA", quoting_style="needed",
                                                                  batch_size=1 << 16))
            except (pa.ArrowException, UnicodeError):
                return as_text()
            return out.getvalue()
        return write

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_csv_bytes` atomically (temp file + rename)."""
        return write_atomic(path, self.to_csv_bytes())

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> SummarisedResult:
        """Read a file written by :meth:`to_csv` or by omopgenerics."""
        return cls._from_raw(_read_raw(Path(path), str(path)))

    @classmethod
    def from_csv_text(cls, text: str, *, source: str = "results CSV") -> SummarisedResult:
        """Read the text of such a file (e.g. a bundle's ``results_csv``)."""
        # as UTF-8 bytes: a StringIO over a large text costs more than parsing it (a 33 MB table: 1.2 s)
        try:
            buf: io.BytesIO | io.StringIO = io.BytesIO(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: read as text, as before
            buf = io.StringIO(text)
        return cls._from_raw(_read_raw(buf, source))

    @classmethod
    def _from_raw(cls, raw: pd.DataFrame) -> SummarisedResult:
        is_set = raw["variable_name"] == "settings"
        data, long_set = raw.loc[~is_set], raw.loc[is_set]
        if long_set.duplicated(["result_id", "estimate_name"]).any() and \
                long_set.drop_duplicates(["result_id", "estimate_name", "estimate_value"]).duplicated(
                    ["result_id", "estimate_name"]).any():
            raise ResultFormatError("settings rows give different values for one result_id/setting")
        long_set = long_set.drop_duplicates(["result_id", "estimate_name"])
        settings = long_set.pivot(index="result_id", columns="estimate_name", values="estimate_value")
        settings = settings.reset_index()
        settings.columns.name = None
        if settings.empty:
            settings = pd.DataFrame(columns=list(SETTINGS_COLUMNS))
        return cls(data, settings)


def _read_raw(path: Path | io.BytesIO | io.StringIO, name: str) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=["NA"], encoding="utf-8")
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ResultFormatError(f"cannot read {name}: {err}") from err
    if list(raw.columns) != list(RESULT_COLUMNS):
        raise ResultFormatError(f"{name}: columns must be the 13 summarised_result columns in order, "
                                f"got {list(raw.columns)}")
    for col in raw.columns:
        raw[col] = _str_col(raw[col])
    return raw


def bind_frames(parts: list[tuple[pd.DataFrame, pd.DataFrame]]) -> SummarisedResult:
    """Bind (data, settings) frames into one result, renumbering result ids in order; one validation."""
    if not parts:
        return SummarisedResult.empty()
    datas, sets, offset = [], [], 0
    for data, settings in parts:
        mapping = {int(old): offset + i + 1 for i, old in enumerate(settings["result_id"])}
        datas.append(data.assign(result_id=data["result_id"].astype("int64").map(mapping)) if len(data) else data)
        sets.append(settings.assign(result_id=settings["result_id"].astype("int64").map(mapping)))
        offset += len(mapping)
    nonempty = [d for d in datas if len(d)]
    data = pd.concat(nonempty, ignore_index=True) if nonempty else SummarisedResult.empty().data
    return SummarisedResult(data, pd.concat(sets, ignore_index=True))


def bind(*results: SummarisedResult) -> SummarisedResult:
    """Module-level alias of :meth:`SummarisedResult.bind`."""
    return SummarisedResult.bind(*results)


def validate_csv(path: str | os.PathLike[str]) -> SummarisedResult:
    """The format check used in tests: 13 columns in order, a settings row set
    for every result_id (with result_type, package_name, package_version) and
    vice versa, unique estimates, valid types and name/level pairs.  Returns
    the parsed result; raises :class:`ResultFormatError`."""
    raw = _read_raw(Path(path), str(path))
    set_ids = set(raw.loc[raw["variable_name"] == "settings", "result_id"])
    data_ids = set(raw.loc[raw["variable_name"] != "settings", "result_id"])
    if data_ids - set_ids:
        raise ResultFormatError(f"{path}: result_id(s) {sorted(data_ids - set_ids)} have no settings rows")
    return SummarisedResult.from_csv(path)
