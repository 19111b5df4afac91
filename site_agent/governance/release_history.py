"""What the site has released, so that a later release cannot be subtracted from an earlier one.

A scheduled re-run after a database refresh, or another study, releases the same counts again.
If a cohort had 103 persons last time and 105 now, each number passes min-cell suppression, but
their difference (2) describes two persons: a suppressed cell recovered by subtraction.

:class:`ReleaseHistory` keeps every released **count** cell (estimate names containing
"count", as :mod:`site_agent.suppression` defines counts) in ``state_dir/release_history.sqlite3``:
result type, the key columns (cdm, group, strata, variable, estimate, additional), value,
manifest id and time. The result_id and the rest of the settings are not part of the key, so a
new package version or result numbering cannot hide a repeat (at worst two different quantities
share a key and something is blocked that did not need to be).

**Choice: block, not coarsen.** :meth:`ReleaseHistory.guard` suppresses (``"-"``) every count
whose value differs from *any* earlier released value of the same key by 1..min-1, then runs
:func:`~site_agent.suppression.suppress` and :func:`~site_agent.disclosure.blank_linked` again so
the blocked cell takes its cell, its group (a blocked "number subjects" blanks the cohort's
whole group), its additive family (complementary suppression) and linked tables with it.
Rounding would leave differences of rounded values that still narrow the new persons down,
and would change numbers researchers pool; blocking keeps every released number exact. A
blocked key is released again once it has moved at least min away from every released value.
Only released cells are recorded (:meth:`ReleaseHistory.record`, called when a bundle is
queued for review or sent), so a blocked value never becomes a reference itself. Record at
queue time: a bundle waiting for review counts as released (if it is then rejected, the
history only errs on the safe side).

**Like with like.** A released count stands for an interval of true counts: itself when exact, the
preimage of its rounding when the site rounds (``round_counts_to``: ``count_rounding = nearest_<b>``),
``b - 1`` either way for risk tables released from rounded cumulative counts (``cumulative_<b>``).
The history keeps each released cell's interval (``lo``, ``hi``) and, site-internal, its exact value
when the site knew it. The guard runs on the table *as it will be released* (after the rounding)
and bounds the change of each cell the way a reader of both releases can: ``[lo_new - hi_old,
hi_new - lo_old]``. It withholds the cell when that interval says a small non-zero number of
persons came or went (the audit's rule, :func:`optima_common.disclosure.audit.change_passes`: a
true change of 1..min-1 must keep every value 1..min-1 of its sign possible; a change of 0, or one
the site does not know, must not be known to be small and non-zero). Two exact releases reduce to
the plain rule above; a rounded release is not compared as if it were exact (no spurious
withholding of 101 because 100 was released for 98..102), and an exact release after a rounded one
is compared with the whole interval the rounded value stood for.

Residual risk: differences between *different* keys across releases (e.g. a cohort in release 1
against a nested cohort in release 2) are not compared here; :mod:`site_agent.disclosure`
covers nesting within one release only.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from optima_common.results import SUPPRESSED, SummarisedResult
from site_agent.disclosure import blank_linked
from site_agent.suppression import suppress

HISTORY_FILE = "release_history.sqlite3"
KEY_COLUMNS = ("cdm_name", "group_name", "group_level", "strata_name", "strata_level", "variable_name",
               "variable_level", "estimate_name", "additional_name", "additional_level")
_NA = "\x00NA"


@dataclass(frozen=True)
class BlockedCell:
    """A count withheld because an earlier release would reveal the difference."""

    result_type: str
    group_level: str
    strata_level: str
    variable_name: str
    variable_level: str | None
    estimate_name: str
    value: float  # the value withheld now (site-internal; do not send it anywhere)
    earlier: float  # the released value it is too close to
    earlier_manifest_id: str
    earlier_lo: float | None = None  # the interval the earlier release stands for (None: exactly ``earlier``)
    earlier_hi: float | None = None
    change: float = float("nan")  # the true change since (site-internal; NaN if the site does not know it)

    def anchor(self):
        """For the audit (:func:`optima_common.disclosure.audit.passes`): the earlier release."""
        if self.earlier_lo is None or self.earlier_hi is None or self.earlier_lo == self.earlier_hi:
            return float(self.earlier)
        return float(self.earlier_lo), float(self.earlier_hi), float(self.change)


@dataclass(frozen=True)
class GuardReport:
    blocked: tuple[BlockedCell, ...]  # withheld because of the history
    also_suppressed: int  # further estimates blanked by re-suppression (cells, groups, families, links)

    @property
    def changed(self) -> bool:
        return bool(self.blocked)


def _cell_keys(data: pd.DataFrame) -> pd.Series:
    parts = [data[c].fillna(_NA).astype(str) for c in KEY_COLUMNS]
    return parts[0].str.cat(parts[1:], sep="\x1f")


def _count_rows(result: SummarisedResult, minimum: int = 0, exact: SummarisedResult | None = None) -> pd.DataFrame:
    """Released numeric count cells with their result type, key, the interval of true counts a reader
    infers (``lo``, ``hi``) and the exact count where the site knows it (``exact``; NaN otherwise).
    ``exact``: the same table before rounding (same rows), if it was rounded."""
    from optima_common.disclosure.rounding import released_intervals

    d = result.data
    st = result.settings
    rtype = d["result_id"].map(dict(zip(st["result_id"], st["result_type"])))
    rounding = (d["result_id"].map(dict(zip(st["result_id"], st["count_rounding"].fillna("").astype(str))))
                .fillna("") if "count_rounding" in st.columns else pd.Series("", index=d.index))
    value = pd.to_numeric(d["estimate_value"], errors="coerce")
    is_count = d["estimate_name"].str.lower().str.contains("count", regex=False) & value.notna()
    rows = d.loc[is_count].assign(result_type=rtype[is_count], value=value[is_count])
    lo, hi = released_intervals(rows["value"].to_numpy(), rounding[is_count].to_numpy(), max(minimum, 0))
    known = np.where(lo == hi, rows["value"].to_numpy(dtype=float), np.nan)
    if exact is not None and len(exact.data) == len(d):
        ex = pd.to_numeric(pd.Series(exact.data["estimate_value"].to_numpy(), index=d.index), errors="coerce")[is_count]
        near = rounding[is_count].str.startswith("nearest_").to_numpy()
        known = np.where(near, ex.to_numpy(dtype=float), known)
    return rows.assign(cell_key=_cell_keys(rows), lo=lo, hi=hi, exact=known)


class ReleaseHistory:
    """The released count cells of one site (SQLite in ``state_dir``)."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / HISTORY_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS released (result_type TEXT NOT NULL, cell_key TEXT NOT NULL, "
                        + ", ".join(f"{c} TEXT" for c in KEY_COLUMNS)
                        + ", value REAL NOT NULL, manifest_id TEXT NOT NULL, released_at TEXT NOT NULL, "
                          "lo REAL, hi REAL, exact REAL, "
                          "UNIQUE (manifest_id, result_type, cell_key))")
            have = {r[1] for r in con.execute("PRAGMA table_info(released)")}
            for col in ("lo", "hi", "exact"):  # a history written before intervals were kept
                if col not in have:
                    con.execute(f"ALTER TABLE released ADD COLUMN {col} REAL")
            con.execute("CREATE INDEX IF NOT EXISTS released_key ON released (result_type, cell_key)")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA synchronous=FULL")
        return con

    def earlier(self, result_type: str | None = None) -> pd.DataFrame:
        """Recorded cells (all, or of one result type)."""
        con = self._connect()
        try:
            where, args = ("WHERE result_type = ?", (result_type,)) if result_type else ("", ())
            return pd.read_sql_query(f"SELECT * FROM released {where}", con, params=args)
        finally:
            con.close()

    def guard(self, result: SummarisedResult, min_cell_count: int, *, exact: SummarisedResult | None = None
              ) -> tuple[SummarisedResult, GuardReport]:
        """The result with every count that an earlier release would reveal by subtraction withheld.

        ``result`` is the table as it will be released (rounded, if the site rounds); ``exact`` the
        same rows before rounding (site-internal), so that the true change of a cell is known."""
        from optima_common.disclosure.audit import change_passes_many

        if min_cell_count < 2 or result.data.empty:
            return result, GuardReport((), 0)
        new = _count_rows(result, min_cell_count, exact)
        if new.empty:
            return result, GuardReport((), 0)
        old = self.earlier()
        old = old[old["cell_key"].isin(set(new["cell_key"]))]
        old = old.assign(lo=old["lo"].astype(float).fillna(old["value"]), hi=old["hi"].astype(float).fillna(old["value"]),
                         exact=old["exact"].astype(float))
        old = old.assign(exact=old["exact"].where(old["exact"].notna(), old["value"].where(old["lo"] == old["hi"])))
        pairs = new.reset_index().merge(old[["result_type", "cell_key", "value", "manifest_id", "lo", "hi", "exact"]],
                                        on=["result_type", "cell_key"], suffixes=("", "_earlier"))
        dlo = (pairs["lo"] - pairs["hi_earlier"]).to_numpy(dtype=float)
        dhi = (pairs["hi"] - pairs["lo_earlier"]).to_numpy(dtype=float)
        change = (pairs["exact"] - pairs["exact_earlier"]).to_numpy(dtype=float)
        bad = ~change_passes_many(dlo, dhi, change, min_cell_count)
        hits = pairs[bad].sort_values(["index", "value_earlier"], kind="mergesort").drop_duplicates("index")
        if hits.empty:
            return result, GuardReport((), 0)
        data = result.data.copy()
        data.loc[hits["index"].to_numpy(), "estimate_value"] = SUPPRESSED
        before = (data["estimate_value"] == SUPPRESSED).to_numpy()
        protected = blank_linked(suppress(result.with_data(data), min_cell_count))
        after = (protected.data["estimate_value"] == SUPPRESSED).to_numpy()
        blocked = tuple(BlockedCell(r.result_type, r.group_level, r.strata_level, r.variable_name,
                                    None if pd.isna(r.variable_level) else r.variable_level, r.estimate_name,
                                    float(r.exact) if pd.notna(r.exact) else float(r.value), float(r.value_earlier),
                                    r.manifest_id, float(r.lo_earlier), float(r.hi_earlier),
                                    float(r.exact - r.exact_earlier) if pd.notna(r.exact) and pd.notna(r.exact_earlier)
                                    else float("nan"))
                        for r in hits.itertuples())
        return protected, GuardReport(blocked, int(np.sum(after & ~before)))

    def record(self, result: SummarisedResult, manifest_id: str, *, minimum: int = 0,
               exact: SummarisedResult | None = None) -> int:
        """Remember the released count cells of ``result`` (recording a manifest twice is a no-op),
        each with the interval of true counts it stands for and, where known, its exact value."""
        rows = _count_rows(result, minimum, exact)
        now = dt.datetime.now(dt.UTC).isoformat()
        cols = ["result_type", "cell_key", *KEY_COLUMNS, "value", "manifest_id", "released_at", "lo", "hi", "exact"]
        frame = rows.assign(manifest_id=manifest_id, released_at=now)[cols].astype(object)
        for c in ("value", "lo", "hi", "exact"):
            frame[c] = rows[c].astype(float).astype(object)
        values = list(frame.where(frame.notna(), None).itertuples(index=False, name=None))
        con = self._connect()
        try:
            with con:
                cur = con.executemany(f"INSERT OR IGNORE INTO released ({', '.join(cols)}) "
                                      f"VALUES ({', '.join('?' * len(cols))})", values)
                return cur.rowcount
        finally:
            con.close()
