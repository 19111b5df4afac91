"""An attacker who holds only released CSV files and tries every relation a reader can see.

Written independently of ``optima_common.disclosure`` (nothing imported from it): the relations
are read off the table layout the way an analyst would, and every withheld count is bounded by
SciPy's ``linprog`` (not the production's highspy models) over all relations at once within each
group of linked cells. ``narrowed`` returns the withheld counts (and visible complements) whose
feasible interval no longer holds every value 1..min-1 although the truth is small.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import numpy as np
import pandas as pd
from scipy.optimize import linprog

from optima_common.results import SummarisedResult


def linked_groups(rels, unknown) -> tuple[dict, dict]:
    """Unknown cells linked by relations (union-find): ({root: [cells]}, {root: [(relation, kind)]})."""
    parent: dict[int, int] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r, _ in rels:
        for a, b in pairwise([k for k in r if unknown[k]]):
            parent[find(a)] = find(b)
    groups, by_group = defaultdict(list), defaultdict(list)
    for k in np.flatnonzero(unknown):
        groups[find(int(k))].append(int(k))
    for r, kind in rels:
        hs = [k for k in r if unknown[k]]
        if hs:
            by_group[find(hs[0])].append((r, kind))
    return groups, by_group

def table(result: SummarisedResult) -> pd.DataFrame:
    d = result.data.reset_index(drop=True)
    t = d["result_id"].map(dict(zip(result.settings["result_id"], result.settings["result_type"])))
    v = pd.to_numeric(d["estimate_value"], errors="coerce")
    hidden = d["estimate_value"] == "-"
    cnt = d["estimate_name"].str.contains("count") & (v.notna() | hidden)
    st = result.settings
    # a result released from rounded counts says so in its settings (count_rounding)
    rounded = d["result_id"].map(dict(zip(st["result_id"], st["count_rounding"].fillna("").astype(str)))) \
        if "count_rounding" in st.columns else pd.Series("", index=d.index)
    return d.assign(t=t, v=v, hidden=hidden, cnt=cnt, rounded=rounded.fillna("").to_numpy())


class Relations:
    """eq: sum(c*x) = 0; le: sum(c*x) <= 0 (over row ids)."""

    def __init__(self):
        self.eq: list[dict[int, float]] = []
        self.le: list[dict[int, float]] = []
        self.complements: list[tuple[int, int]] = []  # (part, total): total - part is a person count

    def total(self, total: int, parts, kind="eq"):
        parts = [p for p in parts if p != total]
        if not parts:
            return
        r = {total: 1.0}
        for p in parts:
            r[p] = r.get(p, 0) - 1.0
        (self.eq if kind == "eq" else self.le).append(r)

    def at_most(self, part: int, total: int, complement=True):
        self.le.append({part: 1.0, total: -1.0})
        if complement:
            self.complements.append((part, total))


def read_relations(d: pd.DataFrame) -> Relations:
    R = Relations()
    c = d[d["cnt"]]
    # attrition chains
    for (_, _), g in c[c["t"].str.endswith("attrition")].groupby(["result_id", "group_level"]):
        g = g.assign(step=pd.to_numeric(g["additional_level"]))
        for w in ("subjects", "records"):
            num = g[g["variable_name"] == f"number_{w}"].set_index("step")["row"].sort_index()
            exc = g[g["variable_name"] == f"excluded_{w}"].set_index("step")["row"]
            steps = list(num.index)
            for a, b in pairwise(steps):
                if b in exc.index:
                    R.eq.append({num[a]: 1.0, num[b]: -1.0, exc[b]: -1.0})
    # code use: codes within the codelist total, years within all years
    for t in ("code_use", "cohort_code_use"):
        cu = c[c["t"] == t]
        for _, g in cu.groupby(["result_id", "group_level", "strata_name", "strata_level", "estimate_name"]):
            tot = g[g["variable_name"] == "overall"]["row"].tolist()
            if len(tot) != 1:
                continue
            parts = g[g["variable_name"] != "overall"]["row"].tolist()
            if g["estimate_name"].iat[0] == "record_count":
                R.total(tot[0], parts)
            else:
                R.total(tot[0], parts, kind="le")
                for p in parts:
                    R.at_most(p, tot[0])
        yr = cu[cu["strata_name"].isin(["overall", "year"])]
        for _, g in yr.groupby(["result_id", "group_level", "variable_name", "variable_level", "additional_level",
                                "estimate_name"], dropna=False):
            tot = g[g["strata_name"] == "overall"]["row"].tolist()
            if len(tot) != 1:
                continue
            parts = g[g["strata_name"] == "year"]["row"].tolist()
            if g["estimate_name"].iat[0] == "record_count":
                R.total(tot[0], parts)
            else:
                for p in parts:
                    R.at_most(p, tot[0])
    # incidence: outcomes of the years add up to the overall period
    inc = c[(c["t"] == "incidence") & (c["estimate_name"] == "outcome_count")]
    inc = inc.assign(kind=inc["additional_level"].str.split(" &&& ").str[-1])
    for _, g in inc.groupby(["result_id", "group_level"]):
        tot = g[g["kind"] == "overall"]["row"].tolist()
        if len(tot) == 1:
            R.total(tot[0], g[g["kind"] == "years"]["row"].tolist())
    prev = c[c["t"] == "prevalence"]
    for _, g in prev.groupby(["result_id", "group_level", "additional_level"]):
        o = g[g["estimate_name"] == "outcome_count"]["row"].tolist()
        n = g[g["estimate_name"] == "denominator_count"]["row"].tolist()
        if len(o) == 1 and len(n) == 1:
            R.at_most(o[0], n[0])
    # characteristics: levels add up to the records, flags at most the records; cohort counts
    ch = c[(c["t"] == "summarise_characteristics") & (c["estimate_name"] == "count")]
    records: dict[str, int] = {}
    subjects: dict[str, list[int]] = defaultdict(list)
    for (_, cohort), g in ch.groupby(["result_id", "group_level"]):
        rec = g[g["variable_name"] == "Number records"]["row"].tolist()
        subjects[cohort] += g[g["variable_name"] == "Number subjects"]["row"].tolist()
        if len(rec) != 1:
            continue
        records[cohort] = rec[0]
        other = g[~g["variable_name"].isin(["Number records", "Number subjects"])]
        for _, vg in other[other["variable_level"].notna()].groupby("variable_name"):
            R.total(rec[0], vg["row"].tolist())
        for p in other[other["variable_level"].isna()]["row"]:
            R.at_most(p, rec[0])
    cc = c[c["t"] == "summarise_cohort_count"]
    for cohort, g in cc[cc["variable_name"] == "Number subjects"].groupby("group_level"):
        subjects[cohort] += g["row"].tolist()
    for rows in subjects.values():
        for a, b in pairwise(rows):
            R.eq.append({a: 1.0, b: -1.0})
    lsc = c[(c["t"] == "summarise_large_scale_characteristics") & (c["estimate_name"] == "count")]
    for p, cohort in zip(lsc["row"], lsc["group_level"]):
        if cohort in records:
            R.at_most(p, records[cohort])
    ov = c[(c["t"] == "summarise_cohort_overlap") & (c["estimate_name"] == "count")]
    for gl, g in ov.groupby("group_level"):
        a, b = gl.split(" &&& ")
        rows = dict(zip(g["variable_name"], g["row"]))
        for side, name in (("Only in reference cohort", a), ("Only in comparator cohort", b)):
            if subjects.get(name) and side in rows and "In both cohorts" in rows:
                R.eq.append({rows[side]: 1.0, rows["In both cohorts"]: 1.0, subjects[name][0]: -1.0})
    _study(c, R)
    return R


def _study(c: pd.DataFrame, R: Relations) -> None:
    pw = c[(c["t"] == "treatment_pathways") & (c["estimate_name"] == "count")]
    lf = c[(c["t"] == "treatment_line_frequency") & (c["estimate_name"] == "count")]
    for gl, g in pw.groupby("group_level"):
        tot = g[g["variable_name"] == "number subjects"]["row"].tolist()
        paths = g[g["variable_name"] == "pathway"]
        if len(tot) == 1:
            R.total(tot[0], paths["row"].tolist())
        for line, lg in lf[lf["group_level"] == gl].groupby("strata_level"):
            k = int(line) - 1
            ltot = lg[lg["variable_name"] == "number subjects"]["row"].tolist()
            if len(ltot) == 1:
                R.total(ltot[0], lg[lg["variable_name"] == "treatment"]["row"].tolist())
            treats = lg[lg["variable_name"] == "treatment"]
            for treat, r in zip(treats["variable_level"].fillna("None"), treats["row"]):
                members = [p for p, name in zip(paths["row"], paths["variable_level"].fillna("None"))
                           if (name.split("-")[k] if len(name.split("-")) > k else "None") == treat]
                R.total(r, members)
    for t, outs in (("survival_events", ("n_events_count", "n_censor_count")),
                    ("cumulative_incidence_events", ("n_events_count", "n_censor_count", "n_competing_events_count"))):
        ev = c[c["t"] == t].assign(time=lambda x: pd.to_numeric(x["additional_level"]))
        for _, g in ev.groupby(["strata_level", "variable_level"]):
            w = g.pivot_table(index="time", columns="estimate_name", values="row", aggfunc="first").sort_index()
            for a, b in pairwise(w.index):
                r = {int(w.at[a, "n_risk_count"]): 1.0, int(w.at[b, "n_risk_count"]): -1.0}
                for o in outs:
                    r[int(w.at[a, o])] = r.get(int(w.at[a, o]), 0) - 1.0
                R.eq.append(r)
        # strata rounded one by one do not add up to the overall curve: only exact tables
        for _, g in ev[ev["rounded"] == ""].groupby(["variable_level", "time", "estimate_name"]):
            tot = g[g["strata_name"] == "overall"]["row"].tolist()
            if len(tot) == 1:
                R.total(tot[0], g[g["strata_name"] == "treatment_sequence"]["row"].tolist())
    oh = c[(c["t"] == "outcome_horizons") & (c["rounded"] == "")]  # strata rounded one by one do not add up
    for _, g in oh.groupby(["variable_name", "variable_level", "estimate_name"], dropna=False):
        tot = g[g["strata_name"] == "overall"]["row"].tolist()
        if len(tot) == 1:
            R.total(tot[0], g[g["strata_name"] == "treatment_sequence"]["row"].tolist())


def narrowed(released: SummarisedResult, truth: SummarisedResult, minimum: int) -> list[dict]:
    """Small true values (1..min-1) the attacker pins tighter than 1..min-1, by LP over all relations."""
    d = table(released).reset_index(drop=True)
    d["row"] = np.arange(len(d))
    true = pd.to_numeric(truth.data.reset_index(drop=True)["estimate_value"], errors="coerce").to_numpy()
    R = read_relations(d)
    withheld = d["hidden"].to_numpy() & d["cnt"].to_numpy()
    val = d["v"].to_numpy()
    # a count rounded to the nearest multiple of b (setting count_rounding = nearest_<b>) is only
    # known to lie in its rounding's preimage: an unknown with those bounds, like a withheld one
    near = d["rounded"].str.startswith("nearest_").to_numpy() & d["cnt"].to_numpy() & ~withheld & (val > 0)
    box = {}
    for k in np.flatnonzero(near):
        b = int(d["rounded"].iat[k].split("_")[1])
        v = val[k]
        box[int(k)] = (minimum if v == b else max(v - b // 2, minimum), v + (b + 1) // 2 - 1)
    hidden = withheld | near
    leaks = []
    # visible complements: a total minus a visible part that is a person count
    for p, t in R.complements:
        if not hidden[p] and not hidden[t] and 0 < val[t] - val[p] < minimum:
            leaks.append({"kind": "complement", "row": p, "interval": (val[t] - val[p],) * 2})
    rels = [(r, "eq") for r in R.eq] + [(r, "le") for r in R.le]
    # group linked hidden cells (union-find over relations with hidden members)
    groups, rel_by_group = linked_groups(rels, hidden)
    for root, members in groups.items():
        small = [m for m in members if withheld[m] and 0 < true[m] < minimum]
        if not small or not rel_by_group[root]:
            continue
        idx = {m: i for i, m in enumerate(members)}
        A_eq, b_eq, A_ub, b_ub = [], [], [], []
        for r, kind in rel_by_group[root]:
            row = np.zeros(len(members))
            const = 0.0
            for k, coef in r.items():
                if hidden[k]:
                    row[idx[k]] += coef
                else:
                    const += coef * val[k]
            (A_eq if kind == "eq" else A_ub).append(row)
            (b_eq if kind == "eq" else b_ub).append(-const)
        kw = {"A_eq": np.array(A_eq) if A_eq else None, "b_eq": b_eq or None,
              "A_ub": np.array(A_ub) if A_ub else None, "b_ub": b_ub or None,
              "bounds": [box.get(m, (0, None)) for m in members], "method": "highs"}
        for m in small:
            obj = np.zeros(len(members))
            obj[idx[m]] = 1
            lo = linprog(obj, **kw)
            hi = linprog(-obj, **kw)
            if lo.status != 0:
                continue
            lo_v = np.ceil(lo.fun - 1e-6)
            hi_v = np.inf if hi.status == 3 else np.floor(-hi.fun + 1e-6)
            if not (lo_v <= 1 and hi_v >= minimum - 1):
                leaks.append({"kind": "withheld", "row": m, "interval": (lo_v, hi_v), "type": d["t"].iat[m]})
    return leaks


def narrowable(released: SummarisedResult, minimum: int) -> list[dict]:
    """Without the truth (what anyone holding only the released file can do): every withheld count
    whose feasible interval, by LP over the relations read off the table, says "a small non-zero
    number" - at most min-2 possible values between 1 and min-1, or not 0 and below min-1."""
    d = table(released).reset_index(drop=True)
    d["row"] = np.arange(len(d))
    R = read_relations(d)
    withheld = d["hidden"].to_numpy() & d["cnt"].to_numpy()
    val = d["v"].to_numpy()
    rels = [(r, "eq") for r in R.eq] + [(r, "le") for r in R.le]
    groups, by_group = linked_groups(rels, withheld)
    leaks = []
    for root, members in groups.items():
        if not by_group[root]:
            continue
        idx = {m: i for i, m in enumerate(members)}
        A_eq, b_eq, A_ub, b_ub = [], [], [], []
        for r, kind in by_group[root]:
            row = np.zeros(len(members))
            const = sum(c * val[k] for k, c in r.items() if not withheld[k])
            for k, c in r.items():
                if withheld[k]:
                    row[idx[k]] += c
            (A_eq if kind == "eq" else A_ub).append(row)
            (b_eq if kind == "eq" else b_ub).append(-const)
        kw = {"A_eq": np.array(A_eq) if A_eq else None, "b_eq": b_eq or None,
              "A_ub": np.array(A_ub) if A_ub else None, "b_ub": b_ub or None,
              "bounds": [(0, None)] * len(members), "method": "highs"}
        for m in members:
            obj = np.zeros(len(members))
            obj[idx[m]] = 1
            hi = linprog(-obj, **kw)
            if hi.status not in (0, 3):
                continue
            hi_v = np.inf if hi.status == 3 else np.floor(-hi.fun + 1e-6)
            if hi_v <= 0 or hi_v > minimum - 1:
                continue
            lo = linprog(obj, **kw)
            lo_v = np.ceil(lo.fun - 1e-6) if lo.status == 0 else 0.0
            small_only = (0 < hi_v < minimum - 1) or (lo_v >= 1 and hi_v <= minimum - 1)
            if small_only:
                leaks.append({"row": m, "interval": (lo_v, hi_v), "type": d["t"].iat[m]})
    return leaks


# ------------------------------------------------------------------ two releases of the same cells

KEY = ["t", "cdm_name", "group_name", "group_level", "strata_name", "strata_level", "variable_name", "variable_level",
       "estimate_name", "additional_name", "additional_level"]


def reader_intervals(released: SummarisedResult, minimum: int) -> pd.DataFrame:
    """What a reader of one release knows of every count cell: ``lo``, ``hi`` (a visible exact count:
    itself; rounded to the nearest b: its preimage; read off a table rounded cumulatively: b-1 either
    way; withheld: its LP interval over every relation read off the table)."""
    d = table(released).reset_index(drop=True)
    d["row"] = np.arange(len(d))
    val = d["v"].to_numpy()
    cnt = d["cnt"].to_numpy()
    withheld = d["hidden"].to_numpy() & cnt
    lo = np.where(withheld, 0.0, val)
    hi = np.where(withheld, np.inf, val)
    base = pd.to_numeric(d["rounded"].str.extract(r"_(\d+)$")[0], errors="coerce").fillna(0).to_numpy()
    near = d["rounded"].str.startswith("nearest_").to_numpy() & cnt & ~withheld & (val > 0)
    for k in np.flatnonzero(near):
        b, v = base[k], val[k]
        lo[k], hi[k] = (minimum if v == b else max(v - b // 2, minimum)), v + (b + 1) // 2 - 1
    cum = d["rounded"].str.startswith("cumulative_").to_numpy() & cnt & ~withheld
    lo[cum], hi[cum] = np.maximum(val[cum] - (base[cum] - 1), 0), val[cum] + base[cum] - 1
    R = read_relations(d)
    unknown = withheld | near
    rels = [(r, "eq") for r in R.eq] + [(r, "le") for r in R.le]
    groups, by_group = linked_groups(rels, unknown)
    for root, members in groups.items():
        targets = [m for m in members if withheld[m]]
        if not targets or not by_group[root]:
            continue
        idx = {m: i for i, m in enumerate(members)}
        A_eq, b_eq, A_ub, b_ub = [], [], [], []
        for r, kind in by_group[root]:
            row = np.zeros(len(members))
            const = sum(c * val[k] for k, c in r.items() if not unknown[k])
            for k, c in r.items():
                if unknown[k]:
                    row[idx[k]] += c
            (A_eq if kind == "eq" else A_ub).append(row)
            (b_eq if kind == "eq" else b_ub).append(-const)
        kw = {"A_eq": np.array(A_eq) if A_eq else None, "b_eq": b_eq or None,
              "A_ub": np.array(A_ub) if A_ub else None, "b_ub": b_ub or None,
              "bounds": [(lo[m], hi[m] if np.isfinite(hi[m]) else None) if near[m] else (0, None) for m in members],
              "method": "highs"}
        for m in targets:
            obj = np.zeros(len(members))
            obj[idx[m]] = 1
            a, b = linprog(obj, **kw), linprog(-obj, **kw)
            if a.status == 0:
                lo[m] = np.ceil(a.fun - 1e-6)
            hi[m] = np.inf if b.status == 3 else (np.floor(-b.fun + 1e-6) if b.status == 0 else np.inf)
    return d.assign(lo=lo, hi=hi)[cnt]


def differenced(first: SummarisedResult, second: SummarisedResult, truth_first: SummarisedResult,
                truth_second: SummarisedResult, minimum: int) -> list[dict]:
    """Cells released (or withheld) in both releases whose true change (second - first) is 1..min-1
    persons, where a reader of both releases bounds the change, ``[lo2 - hi1, hi2 - lo1]``, tighter
    than every value 1..min-1 of its sign: the new (or gone) persons counted by subtraction."""
    out = []
    a, b = reader_intervals(first, minimum), reader_intervals(second, minimum)
    ta = pd.to_numeric(truth_first.data.reset_index(drop=True)["estimate_value"], errors="coerce")
    tb = pd.to_numeric(truth_second.data.reset_index(drop=True)["estimate_value"], errors="coerce")
    a = a.assign(true=ta.to_numpy()[a["row"].to_numpy()])
    b = b.assign(true=tb.to_numpy()[b["row"].to_numpy()])
    ka = a[KEY].astype(str).agg("\x1f".join, axis=1)
    kb = b[KEY].astype(str).agg("\x1f".join, axis=1)
    a, b = a.assign(k=ka.to_numpy()).drop_duplicates("k", keep=False), b.assign(k=kb.to_numpy()).drop_duplicates("k", keep=False)
    m = a.merge(b, on="k", suffixes=("_1", "_2"))
    for r in m.itertuples():
        change = r.true_2 - r.true_1
        if not (0 < abs(change) < minimum):
            continue
        dlo, dhi = r.lo_2 - r.hi_1, r.hi_2 - r.lo_1
        ok = (dlo <= 1 and dhi >= minimum - 1) if change > 0 else (dhi >= -1 and dlo <= -(minimum - 1))
        if not ok:
            out.append({"cell": r.k.replace("\x1f", " | "), "change": change, "interval": (dlo, dhi),
                        "first": (r.lo_1, r.hi_1), "second": (r.lo_2, r.hi_2)})
    return out
