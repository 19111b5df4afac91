"""Min-cell suppression of a :class:`SummarisedResult`, applied before anything leaves the site.

What omopgenerics ``suppress(minCellCount = 5)`` does (``R/methodSuppress.R``):

* a *count* is any row whose ``estimate_name`` contains ``"count"``; counts with
  ``0 < v < minCellCount`` are suppressed;
* group rule: a suppressed count whose ``variable_name`` is "number subjects" or
  "number records" (case-insensitive, ``_`` read as a space) blanks every other
  estimate of its group (same result_id, cdm_name, group, strata, additional);
* variable rule: a suppressed ``count``/``denominator_count``/``outcome_count``/
  ``record_count``/``subject_count`` blanks the other estimates of its cell
  (same group + variable_name + variable_level);
* linked rule: ``xxx_count`` suppressed blanks ``xxx_percentage`` of the cell;
* but **counts that are not themselves small stay visible** inside a blanked
  group or cell ("keep individuals counts > minCellCount"): the leak;
* ``minCellCount <= 1`` does nothing; result_ids already suppressed with a
  threshold >= the new one are left as they are; the threshold goes into
  ``settings$min_cell_count``.

Ours (stricter):

(a) every count with ``0 < v < min`` becomes ``"-"`` (0 stays 0);
(b) every estimate in the cell of a suppressed count becomes ``"-"``
    (percentages, rates, CIs, means, other counts);
(c) a suppressed *group count* (``variable_name`` in ``group_count_variables`` or
    ``estimate_name`` in ``group_count_estimates``) blanks **every** estimate of
    its group, counts included (closes the leak);
(d) complementary suppression over *additive families* (see
    :func:`additive_families`): a family with exactly one suppressed cell among
    its parts and total gets one more: the smallest visible non-zero part,
    else a zero part, else the total.  (a)-(d) repeat until nothing changes,
    since a new suppression can trigger (b), (c) or another family;
(e) ``min_cell_count`` is written for every result_id (the larger of the old and
    new value); with ``min_cell_count < 2`` nothing is suppressed (as in
    omopgenerics) but the setting is still recorded;
(f) deterministic, idempotent, never modifies its input.

Not covered: linear-programming attacks that combine several families at
once (as tau-argus/sdcTable audit); families only catch the one-cell case.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np
import pandas as pd

from optima_common.disclosure.frame import (  # the cell keys both the suppression and the audit use
    CELL_KEY,
    GROUP_COUNT_ESTIMATES,
    GROUP_COUNT_VARIABLES,
    GROUP_KEY,
)
from optima_common.disclosure.frame import key as _key
from optima_common.disclosure.frame import norm_variable as _norm_variable
from optima_common.results import OVERALL, SEP, SUPPRESSED, SummarisedResult

FamilyBuilder = Callable[[pd.DataFrame, pd.Series, Collection[str]], pd.DataFrame]


def is_count_estimate(name: str) -> bool:
    """omopgenerics' rule: the estimate name contains "count" (we ignore case)."""
    return "count" in name.lower()


def _join(parts: pd.DataFrame) -> pd.Series:
    """Join the non-missing columns of each row with " &&& "; "overall" if none."""
    out = pd.Series("", index=parts.index, dtype=object)
    for c in parts.columns:
        piece = parts[c]
        glue = out.where(out == "", out + SEP)
        out = (glue + piece.fillna("")).where(piece.notna(), out)
    return out.where(out != "", OVERALL)


def additive_families(data: pd.DataFrame, is_count: pd.Series,
                      group_count_variables: Collection[str] = GROUP_COUNT_VARIABLES) -> pd.DataFrame:
    """Which count rows add up to which total.

    Returns one row per (family, member) with columns ``row`` (position in
    ``data``), ``family`` (int id) and ``is_total`` (bool).  Two families are
    assumed; a family whose parts are not truly exclusive/exhaustive only costs
    some extra suppression, never a leak:

    * **variable breakdown**: count rows with the same group key, strata,
      additional, ``variable_name`` and ``estimate_name`` and a real
      ``variable_level`` (not NA/"overall") are the parts; the total is the
      group's "number subjects"/"number records" row with the same
      ``estimate_name`` (one family per such total row present);
    * **strata breakdown**: rows whose strata differ in one key only (e.g.
      ``sex`` Female/Male, or ``age_group &&& sex`` ages within Male) are the
      parts; the total is the row with that key removed (the "overall" strata
      for a single key), everything else equal.

    A custom builder with the same signature can be passed to :func:`suppress`.
    """
    cnt = data.loc[is_count.to_numpy()].copy()
    cnt["row"] = np.flatnonzero(is_count.to_numpy())
    frames: list[pd.DataFrame] = []
    var = _norm_variable(cnt["variable_name"])
    is_total_var = var.isin(set(group_count_variables))
    lvl = cnt["variable_level"]
    parts = cnt[~is_total_var & lvl.notna() & (lvl != OVERALL)]
    totals = cnt[is_total_var]
    if len(parts) and len(totals):
        pk = parts.assign(_g=_key(parts, GROUP_KEY + ["estimate_name"]),
                          _f=_key(parts, GROUP_KEY + ["variable_name", "estimate_name"]))
        tk = totals.assign(_g=_key(totals, GROUP_KEY + ["estimate_name"]))[["_g", "row"]]
        m = pk[["_g", "_f", "row"]].merge(tk.rename(columns={"row": "total_row"}), on="_g")
        m["fam"] = "v\x1e" + m["_f"] + "\x1e" + m["total_row"].astype(str)
        frames.append(pd.DataFrame({"fam": m["fam"], "row": m["row"], "is_total": False}))
        tot = m.drop_duplicates("fam")
        frames.append(pd.DataFrame({"fam": tot["fam"], "row": tot["total_row"], "is_total": True}))
    # strata breakdown: drop one strata key at a time (loop over keys, not rows)
    has_strata = (cnt["strata_name"] != OVERALL).to_numpy()
    full = cnt.assign(_k=_key(cnt, CELL_KEY + ["estimate_name"]))[["_k", "row"]]
    sub = cnt[has_strata]
    if len(sub):
        nm = sub["strata_name"].str.split(SEP, regex=False, expand=True)
        lv = sub["strata_level"].str.split(SEP, regex=False, expand=True)
        for j in nm.columns:
            sel = nm[j].notna()
            rest = [c for c in nm.columns if c != j]
            parent = sub[sel].assign(strata_name=_join(nm.loc[sel, rest]), strata_level=_join(lv.loc[sel, rest]))
            pkey = _key(parent, CELL_KEY + ["estimate_name"])
            fam = "s\x1e" + nm.loc[sel, j] + "\x1e" + pkey
            frames.append(pd.DataFrame({"fam": fam, "row": parent["row"], "is_total": False, "_k": pkey}))
    if not frames:
        return pd.DataFrame({"row": pd.Series(dtype="int64"), "family": pd.Series(dtype="int64"),
                             "is_total": pd.Series(dtype=bool)})
    fams = pd.concat(frames, ignore_index=True)
    if "_k" in fams.columns:  # attach the strata totals that exist
        strata_parts = fams[fams["_k"].notna()]
        tot = strata_parts.drop_duplicates("fam")[["fam", "_k"]].merge(full, on="_k")
        fams = pd.concat([fams[["fam", "row", "is_total"]],
                          tot.assign(is_total=True)[["fam", "row", "is_total"]]], ignore_index=True)
    fams = fams.drop_duplicates(["fam", "row"])
    has_total = fams.groupby("fam")["is_total"].transform("any")
    fams = fams[has_total].sort_values(["fam", "is_total", "row"], kind="mergesort")
    fams["family"] = pd.factorize(fams["fam"], sort=True)[0]
    return fams[["row", "family", "is_total"]].reset_index(drop=True)


def _complement(sup: np.ndarray, fams: pd.DataFrame, value: np.ndarray) -> np.ndarray:
    """Rows to suppress so that no family has exactly one suppressed member."""
    if fams.empty:
        return np.zeros(0, dtype=np.int64)
    f = fams.assign(s=sup[fams["row"].to_numpy()])
    n_sup = f.groupby("family")["s"].transform("sum")
    cand = f[(n_sup == 1) & ~f["s"]].copy()
    if cand.empty:
        return np.zeros(0, dtype=np.int64)
    v = value[cand["row"].to_numpy()]
    cand["_zero"] = v == 0
    cand["_v"] = v
    cand = cand.sort_values(["family", "is_total", "_zero", "_v", "row"], kind="mergesort")
    return cand.drop_duplicates("family")["row"].to_numpy()


def suppress(result: SummarisedResult, min_cell_count: int = 5, *,
             group_count_variables: Collection[str] = GROUP_COUNT_VARIABLES,
             group_count_estimates: Collection[str] = GROUP_COUNT_ESTIMATES,
             families: FamilyBuilder = additive_families) -> SummarisedResult:
    """Return a suppressed copy of ``result`` (rules (a)-(f) in the module docstring)."""
    if isinstance(min_cell_count, bool) or int(min_cell_count) != min_cell_count or min_cell_count < 0:
        raise ValueError(f"min_cell_count must be a non-negative integer, got {min_cell_count!r}")
    data = result.data
    settings = result.settings.copy()
    prev = pd.to_numeric(settings["min_cell_count"], errors="coerce").fillna(0).astype("int64")
    threshold = prev.clip(lower=int(min_cell_count))
    settings["min_cell_count"] = threshold.astype(str).astype(object)
    if int(min_cell_count) < 2 or data.empty:
        return result.with_suppressed(np.zeros(len(data), dtype=bool), settings)

    value = data["estimate_value"]
    num = pd.to_numeric(value, errors="coerce").to_numpy(dtype=float)
    dash = (value == SUPPRESSED).to_numpy()
    is_count = data["estimate_name"].str.lower().str.contains("count", regex=False).to_numpy() & (
        ~np.isnan(num) | dash)
    row_min = data["result_id"].map(dict(zip(settings["result_id"], threshold, strict=True))).to_numpy()
    sup = is_count & (dash | ((num > 0) & (num < row_min)))
    is_group_count = is_count & (
        _norm_variable(data["variable_name"]).isin(set(group_count_variables)).to_numpy()
        | data["estimate_name"].isin(set(group_count_estimates)).to_numpy())
    group_id = pd.factorize(_key(data, GROUP_KEY))[0]
    cell_id = pd.factorize(_key(data, CELL_KEY))[0]
    fams = families(data, pd.Series(is_count, index=data.index), group_count_variables)
    value_for_order = np.nan_to_num(num, nan=np.inf)

    def blanked(s: np.ndarray) -> np.ndarray:
        return np.isin(group_id, group_id[s & is_group_count]) | np.isin(cell_id, cell_id[s & is_count])

    while True:  # fixpoint; each pass suppresses at least one more count or stops
        s2 = sup | (blanked(sup) & is_count)
        extra = _complement(s2, fams, value_for_order)
        s2[extra] = True
        if np.array_equal(s2, sup):
            break
        sup = s2
    return result.with_suppressed(sup | blanked(sup), settings)
