"""Declared relations of every result type a site releases.

A result type is released only if it is declared here (:data:`DECLARATIONS`); its builder
adds to a :class:`~optima_common.disclosure.system.System` every linear relation that holds
between its counts, and between its counts and other tables' counts (the same cohort's
number of subjects in the count, characteristics and overlap tables). What the relations say
is written next to each builder; a test checks that every declared relation holds exactly on
unsuppressed synthetic data, so a declaration cannot claim what is not true.

Estimates that are not counts (percentages, rates, prevalences, KM estimates and their CIs,
means, quantiles) are *derived*: :func:`derived_mask` names the ones that must be withheld
because a count they are computed from is withheld.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from optima_common.disclosure import genomics as _genomics
from optima_common.disclosure import model_replies as _model_replies
from optima_common.disclosure import nlp as _nlp
from optima_common.disclosure import system as S
from optima_common.disclosure.frame import (
    CELL_KEY,
    GROUP_COUNT_ESTIMATES,
    GROUP_COUNT_VARIABLES,
    GROUP_KEY,
    OVERALL,
    SEP,
    codes,
    cohort_of,
    count_rows,
    key,
    norm_variable,
)

COHORT_COUNT, CHARS = "summarise_cohort_count", "summarise_characteristics"


class Cohorts:
    """One variable per cohort for its number of subjects and of records (released row or hidden)."""

    def __init__(self, f: pd.DataFrame, s: S.System):
        self.s = s
        rows = f[f["is_count"] & f["result_type"].isin([COHORT_COUNT, CHARS]) & (f["strata_name"] == OVERALL)
                 & (f["estimate_name"] == "count") & (f["group_name"] == "cohort_name")]
        var = norm_variable(rows["variable_name"])
        self.vars: dict[tuple[str, str], int] = {}
        for what in ("number subjects", "number records"):
            sub = rows[var == what]
            for cohort, g in sub.groupby("group_level", sort=True):
                r = g["row"].to_numpy()
                S.identical(s, np.repeat(r[0], len(r) - 1), r[1:], f"{what} of cohort {cohort} in two tables")
                self.vars[(cohort, what)] = int(r[0])

    def var(self, cohort: str, what: str = "number subjects") -> int:
        k = (cohort, what)
        if k not in self.vars:
            self.vars[k] = int(self.s.new_hidden(1, protect=False)[0])
            if what == "number subjects":
                S.at_most(self.s, [self.vars[k]], [self.var(cohort, "number records")],
                          f"subjects <= records of cohort {cohort}")
        return self.vars[k]


def _pairs_in_cell(s: S.System, c: pd.DataFrame, small: str, big: str, label: str) -> None:
    ck = key(c, CELL_KEY)
    a = c[c["estimate_name"] == small].assign(k=ck)
    b = c[c["estimate_name"] == big].assign(k=ck)
    m = a.merge(b, on="k", suffixes=("_a", "_b"))
    S.at_most(s, m["row_a"].to_numpy(), m["row_b"].to_numpy(), label)


def _group_totals(c: pd.DataFrame, is_total: pd.Series, extra_group: list[str], group_cols: list[str]):
    """(parts, totals) frames with a common ``key``: parts grouped by ``group_cols + extra_group``
    (one sum per key), each key's total the ``is_total`` row of ``group_cols``."""
    parts = c[~is_total]
    totals = c[is_total]
    parts = parts.assign(key=key(parts, group_cols + extra_group), gk=key(parts, group_cols))
    totals = totals.assign(gk=key(totals, group_cols))[["gk", "row"]].drop_duplicates("gk", keep=False)
    t = parts[["key", "gk"]].drop_duplicates().merge(totals, on="gk")
    return parts[["key", "row"]], t[["key", "row"]]


# ----------------------------------------------------------------------------- builders

def cohort_count(f, s, co):
    """Number subjects <= number records of each cohort; the same numbers as in characteristics."""
    c = count_rows(f, COHORT_COUNT)
    v = norm_variable(c["variable_name"])
    m = c[v == "number subjects"].merge(c[v == "number records"], on="group_level", suffixes=("_s", "_r"))
    S.at_most(s, m["row_s"], m["row_r"], "subjects <= records")


def attrition(f, s, co, rt):
    """Attrition chain: number at step k-1 - number at step k = excluded at step k (subjects, records)."""
    c = count_rows(f, rt)
    order = pd.to_numeric(c["additional_level"], errors="coerce")
    c = c.assign(order=order, v=c["variable_name"].str.lower(), gk=key(c, ["result_id", "group_level"]))
    for what in ("subjects", "records"):
        num = c[c["v"] == f"number_{what}"][["gk", "order", "row"]].rename(columns={"row": "cur"})
        exc = c[c["v"] == f"excluded_{what}"][["gk", "order", "row"]].rename(columns={"row": "out"})
        frame = num.merge(exc, on=["gk", "order"], how="left").fillna({"out": -1}).rename(columns={"gk": "key"})
        S.chain(s, frame, f"attrition chain ({what}): previous - current = excluded")
    num_s = c[c["v"] == "number_subjects"].assign(k=lambda x: x["gk"] + "\x1f" + x["order"].astype(str))
    num_r = c[c["v"] == "number_records"].assign(k=lambda x: x["gk"] + "\x1f" + x["order"].astype(str))
    m = num_s.merge(num_r, on="k", suffixes=("_s", "_r"))
    S.at_most(s, m["row_s"], m["row_r"], "attrition: subjects <= records")


def overlap(f, s, co):
    """Only in A + in both = subjects of A; only in B + in both = subjects of B."""
    c = count_rows(f, "summarise_cohort_overlap")
    c = c[c["estimate_name"] == "count"]
    for gl, g in c.groupby("group_level", sort=False):
        ref, comp = gl.split(SEP)
        rows = dict(zip(g["variable_name"], g["row"]))
        both = rows.get("In both cohorts")
        if both is None:
            continue
        for side, name in (("Only in reference cohort", ref), ("Only in comparator cohort", comp)):
            if side in rows:
                s.add(np.zeros(3), [rows[side], both, co.var(name)], [1.0, 1.0, -1.0], 1,
                      f"overlap: only in {name} + in both = subjects of {name}")


def timing(f, s, co):
    """Timing of a pair: its number of subjects is the overlap's 'in both'."""
    c = count_rows(f, "summarise_cohort_timing")
    ov = count_rows(f, "summarise_cohort_overlap")
    ov = ov[(ov["variable_name"] == "In both cohorts") & (ov["estimate_name"] == "count")]
    both = {frozenset(gl.split(SEP)): r for gl, r in zip(ov["group_level"], ov["row"])}
    v = norm_variable(c["variable_name"])
    subj = c[v == "number subjects"]
    pairs = [(r, both[frozenset(gl.split(SEP))]) for gl, r in zip(subj["group_level"], subj["row"])
             if frozenset(gl.split(SEP)) in both]
    if pairs:
        a, b = zip(*pairs)
        S.identical(s, a, b, "timing subjects = overlap in both")
    m = subj.merge(c[v == "number records"], on=["result_id", "group_level"], suffixes=("_s", "_r"))
    S.at_most(s, m["row_s"], m["row_r"], "timing: subjects <= records")


def characteristics(f, s, co):
    """Per cohort: levels of a categorical variable add up to the number of records; a flag
    (e.g. any visit in the prior year) is at most the number of records (its complement is
    protected); subjects <= records."""
    c = count_rows(f, CHARS)
    c = c[c["estimate_name"] == "count"]
    v = norm_variable(c["variable_name"])
    grp = ["result_id", "group_level", "strata_name", "strata_level"]
    total = v == "number records"
    cat = c[total | c["variable_level"].notna() & ~v.isin(GROUP_COUNT_VARIABLES)]
    parts, totals = _group_totals(cat, norm_variable(cat["variable_name"]) == "number records", ["variable_name"], grp)
    S.sum_equals(s, parts, totals, "characteristics: levels of a variable add up to the records")
    flag = c[total | c["variable_level"].isna() & ~v.isin(GROUP_COUNT_VARIABLES)]
    parts, totals = _group_totals(flag, norm_variable(flag["variable_name"]) == "number records",
                                  ["variable_name", "additional_level"], grp)
    S.each_at_most(s, parts, totals, "characteristics: a flag is at most the records (complement protected)")
    m = c[v == "number subjects"].merge(c[total], on=grp, suffixes=("_s", "_r"))
    S.at_most(s, m["row_s"], m["row_r"], "characteristics: subjects <= records")


def large_scale(f, s, co):
    """Each concept count is at most the cohort's records (its complement is protected)."""
    c = count_rows(f, "summarise_large_scale_characteristics")
    c = c[c["estimate_name"] == "count"]
    big = [co.var(x, "number records") for x in c["group_level"]]
    S.at_most(s, c["row"].to_numpy(), np.asarray(big), "large scale: concept <= records (complement protected)",
              protect=True)


def code_use(f, s, co, rt):
    """Records: codes add up to the codelist total, years add up to all years. Persons: the total
    is at most the sum of codes (a person can have several codes), each code at most the total
    (complement protected); the same across years; persons <= records in each cell."""
    c = count_rows(f, rt)
    is_total = c["variable_name"] == OVERALL
    for est, kind in (("record_count", "eq"), ("person_count", "le")):
        e = c[c["estimate_name"] == est]
        for label, tot, part_cols, grp in (
                ("codes within codelist", e["variable_name"] == OVERALL, [],
                 ["result_id", "group_level", "strata_name", "strata_level"]),
                ("years within all years", e["strata_name"] == OVERALL, [],
                 ["result_id", "group_level", "variable_name", "variable_level", "additional_level"])):
            sub = e if label.startswith("codes") else e[(e["strata_name"] == OVERALL) | (e["strata_name"] == "year")]
            tmask = tot if label.startswith("codes") else sub["strata_name"] == OVERALL
            parts, totals = _group_totals(sub, tmask.loc[sub.index], part_cols, grp)
            if kind == "eq":
                S.sum_equals(s, parts, totals, f"{rt} records: {label} add up")
            else:
                S.sum_at_least(s, parts, totals, f"{rt} persons: total <= sum of {label}")
                S.each_at_most(s, parts, totals, f"{rt} persons: each of {label} <= total (complement protected)")
    del is_total
    _pairs_in_cell(s, c, "person_count", "record_count", f"{rt}: persons <= records")


def orphan_code_use(f, s, co):
    """No totals; persons <= records in each cell."""
    _pairs_in_cell(s, count_rows(f, "orphan_code_use"), "person_count", "record_count", "orphan codes: persons <= records")


def incidence(f, s, co):
    """Outcome counts of the years add up to the overall period; denominator of the overall period
    is at most the sum of the years and each year at most the overall (complement protected)."""
    c = count_rows(f, "incidence")
    interval = c["additional_level"].str.split(SEP, regex=False).str[-1]
    c = c.assign(interval=interval)
    c = c[c["interval"].isin(["years", "overall"])]
    grp = ["result_id", "group_level", "variable_name", "estimate_name"]
    for est in ("outcome_count", "denominator_count"):
        e = c[c["estimate_name"] == est]
        parts, totals = _group_totals(e, e["interval"] == "overall", [], grp)
        if est == "outcome_count":
            S.sum_equals(s, parts, totals, "incidence: outcomes of the years add up to the overall period")
        else:
            S.sum_at_least(s, parts, totals, "incidence: overall denominator <= sum of the years")
            S.each_at_most(s, parts, totals, "incidence: denominator of a year <= overall (complement protected)")


def prevalence(f, s, co):
    """Outcome <= denominator in each period (the persons without the outcome are protected)."""
    c = count_rows(f, "prevalence")
    k = key(c, ["result_id", "group_level", "additional_level"])
    o = c[c["estimate_name"] == "outcome_count"].assign(k=k)
    d = c[c["estimate_name"] == "denominator_count"].assign(k=k)
    m = o.merge(d, on="k", suffixes=("_o", "_d"))
    S.at_most(s, m["row_o"], m["row_d"], "prevalence: outcome <= denominator (complement protected)", protect=True)


def observation_period(f, s, co):
    """Subjects <= records for each observation period ordinal."""
    c = count_rows(f, "summarise_observation_period")
    v = norm_variable(c["variable_name"])
    m = c[v == "number subjects"].merge(c[v == "number records"], on=["result_id", "group_level"],
                                        suffixes=("_s", "_r"))
    S.at_most(s, m["row_s"], m["row_r"], "observation period: subjects <= records")


def no_relations(f, s, co):
    """Single totals without parts: nothing to add."""


def _target(c: pd.DataFrame) -> pd.Series:
    return cohort_of(c, "target_cohort_name").fillna(cohort_of(c, "target_cohort"))


def treatment_patterns(f, s, co):
    """Pathways add up to the treated subjects, who are at most the target cohort (untreated
    protected); each line's treatments add up to the line's subjects, and line k's treatment T is
    the sum of the pathways whose k-th step is T ("None" past a pathway's end)."""
    pw = count_rows(f, "treatment_pathways")
    pw = pw[pw["estimate_name"] == "count"]
    grp = ["result_id", "group_level", "strata_name", "strata_level"]
    v = norm_variable(pw["variable_name"])
    parts, totals = _group_totals(pw, v == "number subjects", [], grp)
    S.sum_equals(s, parts, totals, "pathways add up to the number of subjects")
    tot = pw[v == "number subjects"]
    S.at_most(s, tot["row"].to_numpy(), np.asarray([co.var(t) for t in _target(tot)]),
              "treated <= target cohort (untreated protected)", protect=True)
    lf = count_rows(f, "treatment_line_frequency")
    lf = lf[lf["estimate_name"] == "count"]
    lv = norm_variable(lf["variable_name"])
    parts, totals = _group_totals(lf, lv == "number subjects", [], grp)
    S.sum_equals(s, parts, totals, "treatments of a line add up to the line's subjects")
    paths = pw[v == "pathway"]
    for (gl, line), g in lf[lv == "treatment"].groupby(["group_level", "strata_level"], sort=False):
        k = int(line) - 1
        mine = paths[paths["group_level"] == gl]
        step = mine["variable_level"].fillna("None").str.split("-").map(lambda p, k=k: p[k] if len(p) > k else "None")
        for treat, r in zip(g["variable_level"].fillna("None"), g["row"]):
            members = mine.loc[step == treat, "row"].to_numpy()
            s.add(np.zeros(len(members) + 1), np.r_[r, members], np.r_[1.0, -np.ones(len(members))], 1,
                  f"line {line} treatment {treat} = sum of pathways with it at step {line}")
    ttf = count_rows(f, "time_to_first_treatment")
    ttf = ttf[ttf["estimate_name"] == "count"]
    S.at_most(s, ttf["row"].to_numpy(), np.asarray([co.var(t) for t in _target(ttf)]),
              "time to first treatment: n <= target cohort (complement protected)", protect=True)


def outcome_horizons(f, s, co):
    """Per stratum: every count is at most the stratum's subjects (complement protected); 'within'
    counts grow with the horizon (increments protected); treatment-sequence strata add up to overall."""
    c = count_rows(f, "outcome_horizons")
    grp = ["result_id", "group_level", "strata_name", "strata_level"]
    v = norm_variable(c["variable_name"])
    parts, totals = _group_totals(c, v == "number subjects", [], grp)
    S.each_at_most(s, parts, totals, "horizons: count <= subjects (complement protected)")
    w = c[(c["estimate_name"] == "count") & c["variable_level"].fillna("").str.startswith("within")]
    w = w.assign(days=w["variable_level"].map(horizon_days)).sort_values("days", kind="mergesort")
    for _, g in w.groupby(grp + ["variable_name"], sort=False):
        r = g["row"].to_numpy()
        S.at_most(s, r[:-1], r[1:], "horizons: within a shorter horizon <= within a longer one (increment protected)",
                  protect=True)
    # horizons read off rounded tables (count_rounding = cumulative_<b>) are rounded per stratum
    _strata_sum(s, c[~c["rounding"].str.startswith("cumulative").astype(bool)], "treatment_sequence",
                ["variable_name", "variable_level", "estimate_name", "additional_level"],
                "horizons: treatment sequences add up to overall")


def horizon_days(label: str) -> float:
    """'within 3 months' -> 91.3, 'within 5 years' -> 1826: for ordering only."""
    parts = label.split()
    n, unit = float(parts[1]), parts[2]
    return n * (30.4375 if unit.startswith("month") else 365.25 if unit.startswith("year") else 1)


def _strata_sum(s, c, strata_name, cols, label):
    grp = ["result_id", "group_level"] + cols
    sub = c[(c["strata_name"] == OVERALL) | (c["strata_name"] == strata_name)]
    parts, totals = _group_totals(sub, sub["strata_name"] == OVERALL, [], grp)
    S.sum_equals(s, parts, totals, label)


def risk_table(f, s, co, rt):
    """At risk at the next time = at risk now - events - censored (- competing events); strata add up."""
    c = count_rows(f, rt)
    c = c.assign(order=pd.to_numeric(c["additional_level"], errors="coerce"),
                 ck=key(c, ["result_id", "group_level", "strata_name", "strata_level", "variable_level"]))
    risk = c[c["estimate_name"] == "n_risk_count"][["ck", "order", "row"]].rename(columns={"row": "cur"})
    frame = risk
    outs = [e for e in ("n_events_count", "n_censor_count", "n_competing_events_count") if (c["estimate_name"] == e).any()]
    for i, e in enumerate(outs):
        o = c[c["estimate_name"] == e][["ck", "order", "row"]].rename(columns={"row": f"out{i}"})
        frame = frame.merge(o, on=["ck", "order"], how="left")
    frame = frame.fillna(-1).rename(columns={"ck": "key"})
    S.chain(s, frame, f"{rt}: at risk next = at risk - events - censored", out_at_prev=True)
    # strata rounded on their own (cumulative rounding) no longer add up: only exact tables
    _strata_sum(s, c[~c["rounding"].str.startswith("cumulative").astype(bool)], "treatment_sequence",
                ["variable_level", "estimate_name", "additional_level"], f"{rt}: treatment sequences add up to overall")


DECLARATIONS: dict[str, Callable] = {
    COHORT_COUNT: cohort_count,
    "summarise_cohort_attrition": lambda f, s, co: attrition(f, s, co, "summarise_cohort_attrition"),
    "incidence_attrition": lambda f, s, co: attrition(f, s, co, "incidence_attrition"),
    "prevalence_attrition": lambda f, s, co: attrition(f, s, co, "prevalence_attrition"),
    "summarise_cohort_overlap": overlap,
    "summarise_cohort_timing": timing,
    CHARS: characteristics,
    "summarise_large_scale_characteristics": large_scale,
    "code_use": lambda f, s, co: code_use(f, s, co, "code_use"),
    "cohort_code_use": lambda f, s, co: code_use(f, s, co, "cohort_code_use"),
    "orphan_code_use": orphan_code_use,
    "unmapped_codes": no_relations,
    "incidence": incidence,
    "prevalence": prevalence,
    "summarise_observation_period": observation_period,
    "summarise_omop_snapshot": no_relations,
    "treatment_pathways": treatment_patterns,
    "treatment_line_frequency": treatment_patterns,  # one builder ties the three tables together
    "time_to_first_treatment": treatment_patterns,
    "outcome_horizons": outcome_horizons,
    "survival_events": lambda f, s, co: risk_table(f, s, co, "survival_events"),
    "cumulative_incidence_events": lambda f, s, co: risk_table(f, s, co, "cumulative_incidence_events"),
    # derived only (no counts of their own): see derived_mask
    "survival_estimates": no_relations,
    "survival_summary": no_relations,
    "cumulative_incidence": no_relations,
}
DECLARATIONS.update(_genomics.DECLARATIONS)  # mutation_frequency, hotspot_counts, ... (see that module)
DECLARATIONS.update(_nlp.DECLARATIONS)  # nlp_report_counts, nlp_metastasis_agreement
DECLARATIONS.update(_model_replies.DECLARATIONS)  # federated training replies: model_evaluation, model_training_weight


@dataclass(frozen=True)
class Built:
    system: S.System
    cohorts: Cohorts


def build_system(f: pd.DataFrame) -> Built:
    """Every declared relation of the table; the caller has checked that all types are declared."""
    s = S.System(len(f))
    co = Cohorts(f, s)
    done: set[int] = set()
    for rt in sorted(set(f["result_type"])):
        builder = DECLARATIONS[rt]
        if id(builder) not in done:
            done.add(id(builder))
            builder(f, s, co)
    return Built(s, co)


def undeclared(result_types) -> list[str]:
    return sorted(set(result_types) - set(DECLARATIONS))


# ----------------------------------------------------------------------------- derived estimates

CURVES = {"survival_estimates": "survival_events", "survival_summary": "survival_events",
          "cumulative_incidence": "cumulative_incidence_events"}


def derived_mask(f: pd.DataFrame, suppressed: np.ndarray, cohorts: Cohorts | None = None) -> np.ndarray:
    """Non-count estimates that must be withheld because a count they derive from is withheld.

    Same cell (percentage of a count), same group when the group's subject/record/denominator
    count is withheld, same period of an incidence or prevalence analysis, same overlap pair,
    the cohort's records for large-scale percentages, and every point of a curve at or after the
    first withheld count of its risk table (KM and cumulative incidence estimates, CIs, medians).
    """
    sup = np.asarray(suppressed, dtype=bool)
    cnt = f["is_count"].to_numpy()
    hit = np.zeros(len(f), dtype=bool)

    def spread(keys: np.ndarray, sources: np.ndarray) -> np.ndarray:
        return np.isin(keys, keys[sources]) if sources.any() else np.zeros(len(f), dtype=bool)

    hit |= spread(codes(f, CELL_KEY), sup & cnt)
    group_count = cnt & (norm_variable(f["variable_name"]).isin(GROUP_COUNT_VARIABLES).to_numpy()
                         | f["estimate_name"].isin(GROUP_COUNT_ESTIMATES).to_numpy())
    hit |= spread(codes(f, GROUP_KEY), sup & group_count)
    ip = f["result_type"].isin(["incidence", "prevalence", "summarise_cohort_overlap"]).to_numpy()
    hit |= spread(codes(f, ["result_id", "group_level", "additional_level"]), sup & cnt & ip) & ip
    lsc = (f["result_type"] == "summarise_large_scale_characteristics").to_numpy()
    if cohorts is not None and lsc.any():
        rec = {c: v for (c, w), v in cohorts.vars.items() if w == "number records" and v < len(f)}
        bad = {c for c, v in rec.items() if sup[v]}
        hit |= lsc & f["group_level"].isin(bad).to_numpy()
    for est_type, table in CURVES.items():
        est = (f["result_type"] == est_type).to_numpy()
        tab = (f["result_type"] == table).to_numpy() & cnt & sup
        if not est.any() or not tab.any():
            continue
        ck = pd.Series(codes(f, ["cdm_name", "group_level", "strata_name", "strata_level", "variable_level"]),
                       index=f.index)
        t = pd.to_numeric(f["additional_level"], errors="coerce")
        first = t[tab].groupby(ck[tab]).min()
        start = ck.map(first)
        timed = t.notna() & (t >= start)
        untimed = t.isna() & start.notna()
        hit |= est & (timed | untimed).to_numpy()
    return hit & ~cnt
