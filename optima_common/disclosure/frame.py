"""The released table as the audit sees it: one row per estimate, with its result type and parsed parts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from optima_common.results import OVERALL, SEP, SUPPRESSED, SummarisedResult

GROUP_KEY = ["result_id", "cdm_name", "group_name", "group_level", "strata_name", "strata_level",
             "additional_name", "additional_level"]
CELL_KEY = GROUP_KEY + ["variable_name", "variable_level"]
GROUP_COUNT_VARIABLES = frozenset({"number subjects", "number records"})
GROUP_COUNT_ESTIMATES = frozenset({"denominator_count"})
_NA = "\x00NA"
ROUNDING = "count_rounding"  # setting: how a result's counts were rounded ("" = exact)


def is_count_name(names: pd.Series) -> np.ndarray:
    """omopgenerics' rule: an estimate whose name contains "count" is a count."""
    m = {x: "count" in str(x).lower() for x in names.unique()}
    return names.map(m).fillna(False).to_numpy(dtype=bool)


def count_rows(f: pd.DataFrame, rt: str | tuple[str, ...]) -> pd.DataFrame:
    """The count cells of one result type (or several)."""
    rts = (rt,) if isinstance(rt, str) else rt
    return f[f["is_count"] & f["result_type"].isin(rts)]


def key(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    """One string per row identifying the given columns (NA-safe). A plain join over the columns'
    arrays: about 3x less CPU than pandas' ``str.cat`` with several columns, which adds object
    arrays pairwise."""
    parts = [df[c].astype(str).to_numpy() if c == "result_id" else df[c].fillna(_NA).astype(str).to_numpy()
             for c in cols]
    if len(parts) == 1:
        return pd.Series(parts[0], index=df.index)
    return pd.Series(["\x1f".join(x) for x in zip(*parts)], index=df.index, dtype=object)


def codes(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """One integer per row identifying the given columns within ``df`` (NA-safe): for equality
    within one frame only (not comparable across frames)."""
    return df.groupby(cols, dropna=False, sort=False).ngroup().to_numpy()


def norm_variable(s: pd.Series) -> pd.Series:
    """Lower case, "_" as " ", stripped; computed once per distinct name (a table has a few hundred)."""
    s = s.fillna("")
    m = {x: str(x).lower().replace("_", " ").strip() for x in s.unique()}
    return s.map(m)


def part_of(level: pd.Series, name: pd.Series, wanted: str) -> pd.Series:
    """The level of key ``wanted`` in a " &&& "-joined name/level pair (NaN where absent)."""
    out = pd.Series(np.nan, index=level.index, dtype=object)
    names = name.str.split(SEP, regex=False)
    levels = level.str.split(SEP, regex=False)
    for i, (ns, ls) in enumerate(zip(names, levels)):
        if wanted in ns and len(ns) == len(ls):
            out.iat[i] = ls[ns.index(wanted)]
    return out


def audit_frame(result: SummarisedResult) -> pd.DataFrame:
    """``result.data`` with ``row`` (position), ``result_type``, ``num`` (NaN if not numeric),
    ``suppressed`` (value is "-"), ``is_count`` and ``rounding`` (the result's ``count_rounding``
    setting: "" for exact counts, "cumulative_<b>" for risk tables from rounded cumulative counts,
    "nearest_<b>" for counts rounded one by one)."""
    d = result.data
    rtype = d["result_id"].map(dict(zip(result.settings["result_id"], result.settings["result_type"])))
    num = pd.to_numeric(d["estimate_value"], errors="coerce")
    suppressed = (d["estimate_value"] == SUPPRESSED).to_numpy()
    is_count = is_count_name(d["estimate_name"]) & (num.notna().to_numpy() | suppressed)
    st = result.settings
    rounding = (d["result_id"].map(dict(zip(st["result_id"], st[ROUNDING].fillna("").astype(str))))
                .fillna("").to_numpy() if ROUNDING in st.columns else np.full(len(d), "", dtype=object))
    # categorical: string tests (``.str.startswith``) then run once per category, not per row
    return d.assign(row=np.arange(len(d)), result_type=rtype.fillna("").to_numpy(), num=num.to_numpy(),
                    suppressed=suppressed, is_count=is_count, rounding=pd.Categorical(rounding))


def cohort_of(f: pd.DataFrame, wanted: str = "cohort_name") -> pd.Series:
    """The cohort a row is about (group key ``cohort_name`` or ``wanted``)."""
    simple = f["group_name"] == wanted
    out = pd.Series(np.nan, index=f.index, dtype=object)
    out[simple] = f.loc[simple, "group_level"]
    rest = ~simple & f["group_name"].str.contains(wanted, regex=False)
    if rest.any():
        out[rest] = part_of(f.loc[rest, "group_level"], f.loc[rest, "group_name"], wanted)
    return out


__all__ = [
    "CELL_KEY",
    "GROUP_COUNT_ESTIMATES",
    "GROUP_COUNT_VARIABLES",
    "GROUP_KEY",
    "OVERALL",
    "SEP",
    "SUPPRESSED",
    "audit_frame",
    "codes",
    "cohort_of",
    "is_count_name",
    "key",
    "norm_variable",
    "part_of",
]
