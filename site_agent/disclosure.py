"""Disclosure control across result types: what cell suppression alone cannot see.

:func:`site_agent.suppression.suppress` protects each table on its own. Released numbers
from *different* tables can still be combined:

* **Nested cohorts.** If cohort B lies inside cohort A and A has 1..min-1 persons more,
  then A's count minus B's count is a small cell, and differencing any breakdown of A and
  B (sex, age, codes) describes those few persons. :func:`withhold_nested_cohorts`
  (before suppression, on the true overlap counts) withholds every number about B.
* **Overlap and timing of a pair.** "In both" = count(A) - "only in A", and the timing
  table's number of subjects is "in both" again. If any overlap count of a pair was
  suppressed, :func:`blank_linked` blanks the pair's overlap and timing entirely.
* **Attrition.** Excluded counts are differences of consecutive steps, and the final step
  equals the released cohort count. If any attrition number of a cohort was suppressed,
  :func:`blank_linked` blanks that cohort's whole attrition table.

The full audit (declared relations, exact intervals by algebra and LP, secondary
suppression) lives in :mod:`optima_common.disclosure`, so that the coordinator runs the same
one; :func:`release_control` is the site's single entry: primary suppression, nested-cohort
withholding, the audit with what the site knows and does not release (:func:`site_facts`:
persons per cohort and shared by every pair of the manifest's cohorts, from the cohort table).
"""

from __future__ import annotations

import pandas as pd

from optima_common import disclosure as shared
from optima_common.results import SEP, SUPPRESSED, SummarisedResult

COHORT_KEYS = frozenset({"cohort_name", "cohort_name_reference", "cohort_name_comparator",
                         "outcome_cohort_name", "target_cohort_name"})
OVERLAP = "summarise_cohort_overlap"
TIMING = "summarise_cohort_timing"
ATTRITION = "summarise_cohort_attrition"


def _rows_of_type(result: SummarisedResult, result_type: str) -> pd.Series:
    ids = result.settings.loc[result.settings["result_type"] == result_type, "result_id"]
    return result.data["result_id"].isin(ids)


def _cohorts_in_group(group_name: str, group_level: str) -> set[str]:
    names, levels = group_name.split(SEP), group_level.split(SEP)
    return {lvl for n, lvl in zip(names, levels) if n in COHORT_KEYS}


def withhold_nested_cohorts(result: SummarisedResult, min_cell_count: int) -> tuple[SummarisedResult, list[str]]:
    """Blank every estimate about a cohort nested in another with fewer than ``min`` persons more."""
    if min_cell_count < 2:
        return result, []
    d = result.data
    ov = d[_rows_of_type(result, OVERLAP) & (d["estimate_name"] == "count")]
    withheld: set[str] = set()
    for level, rows in ov.groupby("group_level", sort=True):
        ref, comp = level.split(SEP)
        values = dict(zip(rows["variable_name"], pd.to_numeric(rows["estimate_value"], errors="coerce")))
        only_ref, only_comp = values.get("Only in reference cohort"), values.get("Only in comparator cohort")
        if only_ref is None or only_comp is None:
            continue
        if only_comp == 0 and 0 < only_ref < min_cell_count:
            withheld.add(comp)
        elif only_ref == 0 and 0 < only_comp < min_cell_count:
            withheld.add(ref)
    if not withheld:
        return result, []
    hit = [bool(_cohorts_in_group(n, lv) & withheld) for n, lv in zip(d["group_name"], d["group_level"])]
    return result.with_suppressed(hit), sorted(withheld)


def blank_linked(result: SummarisedResult) -> SummarisedResult:
    """After suppression: blank whole pairs (overlap+timing) and attrition tables that hold a suppressed cell."""
    d = result.data.copy()
    suppressed = d["estimate_value"] == SUPPRESSED
    pair_key = d["group_level"].map(lambda lv: frozenset(lv.split(SEP)))
    in_overlap = _rows_of_type(result, OVERLAP)
    bad_pairs = set(pair_key[in_overlap & suppressed])
    if bad_pairs:
        linked = (in_overlap | _rows_of_type(result, TIMING)) & pair_key.isin(bad_pairs)
        d.loc[linked, "estimate_value"] = SUPPRESSED
    in_attrition = _rows_of_type(result, ATTRITION)
    bad_cohorts = set(d.loc[in_attrition & suppressed, "group_level"])
    if bad_cohorts:
        d.loc[in_attrition & d["group_level"].isin(bad_cohorts), "estimate_value"] = SUPPRESSED
    return result.with_data(d)


# ---------------------------------------------------------------- time tables
# Risk tables chain: n_risk(k+1) = n_risk(k) - events(k) - censored(k), and a curve's steps
# reveal events/at-risk. Blanking one small cell alone is undone by its neighbours, so a
# curve is released only up to the first interval where a count, or the number left at risk
# after it, is 1..min-1; from there on the table, the curve's estimates and its summary are
# withheld. The pooled curve then marks those intervals as affected.
TIME_TABLES = {"survival_events": ("survival_estimates", "survival_summary"),
               "cumulative_incidence_events": ("cumulative_incidence", None)}
CURVE_KEY = ["cdm_name", "group_name", "group_level", "strata_name", "strata_level"]


def protect_time_tables(result: SummarisedResult, min_cell_count: int) -> SummarisedResult:
    if min_cell_count < 2:
        return result
    d = result.data.copy()
    small = lambda v: (v > 0) & (v < min_cell_count)
    for events_type, (estimates_type, summary_type) in TIME_TABLES.items():
        ev = d[_rows_of_type(result, events_type)]
        if ev.empty:
            continue
        est = _rows_of_type(result, estimates_type)
        summ = _rows_of_type(result, summary_type) if summary_type else pd.Series(False, index=d.index)
        for key, curve in ev.groupby(CURVE_KEY + ["variable_level"], sort=False, dropna=False):
            wide = curve.pivot_table(index=pd.to_numeric(curve["additional_level"]), columns="estimate_name",
                                     values="estimate_value", aggfunc="first")
            wide = wide.apply(pd.to_numeric, errors="coerce").sort_index()
            others = [c for c in wide.columns if c != "n_risk_count"]
            left = wide["n_risk_count"] - wide[others].sum(axis=1)
            bad = small(wide[others]).any(axis=1) | small(wide["n_risk_count"]) | small(left)
            if not bad.any():
                continue
            first = bad[bad].index[0]
            same_curve = (d[CURVE_KEY] == pd.Series(key[:len(CURVE_KEY)], index=CURVE_KEY)).all(axis=1)
            t = pd.to_numeric(d["additional_level"], errors="coerce")
            tail = same_curve & (t >= first)
            d.loc[tail & (d.index.isin(curve.index) | est), "estimate_value"] = SUPPRESSED
            d.loc[same_curve & summ, "estimate_value"] = SUPPRESSED
    return result.with_data(d)


def protect_horizons(result: SummarisedResult, min_cell_count: int, result_type: str = "outcome_horizons"
                     ) -> SummarisedResult:
    """'Within X' counts are cumulative: withhold a horizon whose increase over the last released
    one is 1..min-1 (the difference would be a small cell)."""
    if min_cell_count < 2:
        return result
    d = result.data.copy()
    rows = d[_rows_of_type(result, result_type) & d["variable_level"].astype(str).str.startswith("within")
             & (d["estimate_name"] == "count")]
    for _, g in rows.groupby(CURVE_KEY + ["variable_name"], sort=False):
        days = g["variable_level"].map(horizon_days)
        last = 0.0
        for idx in days.sort_values(kind="mergesort").index:
            v = pd.to_numeric(d.at[idx, "estimate_value"], errors="coerce")
            if pd.isna(v):
                continue
            if 0 < v - last < min_cell_count:
                cell = (d[CURVE_KEY + ["variable_name", "variable_level"]] ==
                        d.loc[idx, CURVE_KEY + ["variable_name", "variable_level"]]).all(axis=1)
                d.loc[cell, "estimate_value"] = SUPPRESSED
            else:
                last = v
    return result.with_data(d)


def horizon_days(label: str) -> float:
    """'within 3 months' -> 91.3, 'within 5 years' -> 1826: for ordering only."""
    parts = label.split()
    n, unit = float(parts[1]), parts[2]
    return n * (30.4375 if unit.startswith("month") else 365.25 if unit.startswith("year") else 1)


# ---------------------------------------------------------------- the site's release control

def site_facts(cdm, cohort_names: dict[int, str]) -> shared.SiteFacts:
    """Persons per cohort and shared by each pair, from ``<write_schema>.cohort`` (never released)."""
    if not cohort_names:
        return shared.SiteFacts({}, {})
    ids = ", ".join(str(int(i)) for i in sorted(cohort_names))
    per = cdm.query_df(f"SELECT cohort_definition_id AS c, COUNT(DISTINCT subject_id) AS n "
                       f"FROM {cdm.write_schema}.cohort WHERE cohort_definition_id IN ({ids}) GROUP BY 1")
    pairs = cdm.query_df(
        f"WITH p AS (SELECT DISTINCT cohort_definition_id AS c, subject_id FROM {cdm.write_schema}.cohort "
        f"WHERE cohort_definition_id IN ({ids})) "
        "SELECT a.c AS a, b.c AS b, COUNT(*) AS n FROM p a JOIN p b ON a.subject_id = b.subject_id AND a.c < b.c "
        "GROUP BY 1, 2")
    subjects = {cohort_names[int(c)]: int(n) for c, n in zip(per["c"], per["n"])}
    both = {}
    names = sorted(subjects)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both[(a, b)] = 0
    for a, b, n in zip(pairs["a"], pairs["b"], pairs["n"]):
        x, y = sorted((cohort_names[int(a)], cohort_names[int(b)]))
        both[(x, y)] = int(n)
    return shared.SiteFacts(subjects, both)


def nested_from_facts(facts: shared.SiteFacts, min_cell_count: int) -> set[str]:
    """Cohorts inside another cohort with 1..min-1 persons more (from the site's own cohort table)."""
    out = set()
    for (a, b), both in facts.both.items():
        na, nb = facts.subjects.get(a, 0), facts.subjects.get(b, 0)
        if both == nb and 0 < na - nb < min_cell_count:
            out.add(b)
        elif both == na and 0 < nb - na < min_cell_count:
            out.add(a)
    return out


def withhold_cohorts(result: SummarisedResult, names: set[str]) -> SummarisedResult:
    if not names:
        return result
    d = result.data
    hit = [bool(_cohorts_in_group(n, lv) & names) for n, lv in zip(d["group_name"], d["group_level"])]
    return result.with_suppressed(hit)


def release_control(raw: SummarisedResult, min_cell_count: int, *, facts: shared.SiteFacts | None = None,
                    time_tables: bool = False) -> shared.Protection:
    """Everything a table goes through before it may leave the site (nothing is written here)."""
    from site_agent.suppression import suppress

    bound, _ = withhold_nested_cohorts(raw, min_cell_count)
    if time_tables:
        bound = protect_horizons(protect_time_tables(bound, min_cell_count), min_cell_count)
    if facts is not None:
        bound = withhold_cohorts(bound, nested_from_facts(facts, min_cell_count))
    primary = suppress(bound, min_cell_count)
    return shared.protect(raw, primary, min_cell_count, facts=facts)


QUANTILES = frozenset({"median", "q01", "q05", "q10", "q25", "q75", "q90", "q95", "q99"})
EXTREMES = frozenset({"min", "max"})


def drop_extremes(result: SummarisedResult, min_group: int) -> SummarisedResult:
    """``release_extremes = false``: no minimum/maximum anywhere, and no quantile of a group whose
    count (its cell's or group's ``count``/``Number subjects``) is below ``min_group``."""
    d = result.data
    name = d["estimate_name"].str.lower()
    drop = name.isin(EXTREMES)
    quant = name.isin(QUANTILES)
    if quant.any():
        key = ["result_id", "cdm_name", "group_name", "group_level", "strata_name", "strata_level",
               "additional_name", "additional_level"]
        cnt = d[(d["estimate_name"] == "count")].assign(n=lambda x: pd.to_numeric(x["estimate_value"], errors="coerce"))
        size = cnt.groupby(key, dropna=False)["n"].max()
        g = d[quant].join(size, on=key)
        drop |= pd.Series(False, index=d.index).where(~quant, True) & d.index.isin(g.index[~(g["n"] >= min_group)])
    return result.with_data(d[~drop])


def history_anchors(result: SummarisedResult, blocked) -> tuple[SummarisedResult, dict]:
    """For the audit: the cells the release history withheld, with their true value (site-internal)
    and the value released before (the anchor whose neighbourhood old±1..old±(min-1) must stay open;
    for a rounded earlier release, ``(lo, hi, change)``: the interval it stood for and the true change).

    Returns ``(truth, anchors)``: ``truth`` is ``result`` with those cells' true values back in (only
    ever used as the audit's truth, never released) and ``anchors`` maps their row to the old value.
    A blocked cell that matches several rows (the history key is coarser) is left without anchor.
    """
    if not blocked:
        return result, {}
    d = result.data
    rtype = d["result_id"].map(dict(zip(result.settings["result_id"], result.settings["result_type"])))
    level = d["variable_level"].fillna("<NA>")
    index: dict[tuple, list[int]] = {}
    for i, k in enumerate(zip(rtype, d["group_level"], d["strata_level"], d["variable_name"], level,
                              d["estimate_name"])):
        index.setdefault(k, []).append(i)
    values = d["estimate_value"].copy()
    anchors: dict[int, float] = {}
    for b in blocked:
        rows = index.get((b.result_type, b.group_level, b.strata_level, b.variable_name,
                          b.variable_level if b.variable_level is not None else "<NA>", b.estimate_name), [])
        if len(rows) == 1:
            anchors[rows[0]] = b.anchor() if hasattr(b, "anchor") else float(b.earlier)
            values.iat[rows[0]] = str(int(b.value)) if float(b.value).is_integer() else str(b.value)
    return result.with_data(d.assign(estimate_value=values)), anchors


def release_with_history(result: SummarisedResult, minimum: int, history, *, round_to: int = 0,
                         facts: shared.SiteFacts | None = None):
    """The bundle-level release control of ``study_exec`` after the analyses: rounding (site option
    ``round_counts_to``), the release history on the table as it will be released (rounded counts
    compared as the intervals they stand for), the site's nested cohorts, then the audit with the
    history's withheld cells anchored. ``history``: a
    :class:`~site_agent.governance.release_history.ReleaseHistory` (not recorded here).

    Returns ``(protection, exact, guard_report)``; ``exact`` is the table before rounding (same rows,
    site-internal) for :meth:`ReleaseHistory.record`."""
    exact = result
    if round_to >= 2:
        from optima_common.disclosure.rounding import round_counts

        result = round_counts(result, round_to, minimum)
    result, guarded = history.guard(result, minimum, exact=exact)
    if facts is not None:
        result = withhold_cohorts(result, nested_from_facts(facts, minimum))
    truth, anchors = history_anchors(result, guarded.blocked)
    return shared.protect(truth, result, minimum, facts=facts, anchors=anchors), exact, guarded
