"""The released tables of ``genomics profile``, before suppression (site-internal truth).

Every table is a ``summarised_result`` result type (see docs/genomics.md for the layout):
mutation_frequency, variant_classification, hotspot_counts, cooccurrence, actionability,
molecular_subtype, immune_infiltration, age_at_diagnosis. Counts are persons (a person with
several samples or variants counts once).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from site_agent import __version__
from site_agent.genomics import stats
from site_agent.genomics.reference import SUBTYPES

RESULT_TYPES = ("mutation_frequency", "variant_classification", "hotspot_counts", "cooccurrence", "actionability",
                "molecular_subtype", "immune_infiltration", "age_at_diagnosis")
HOTSPOTS = ("PIK3CA H1047R", "PIK3CA E545K", "PIK3CA E542K")
SEP = " &&& "


@dataclass
class Inputs:
    persons: pd.Index  # profiled persons (the linkage's persons)
    variants: pd.DataFrame  # linked variants: person_id, gene, classification, protein_change, non_silent
    clinical: pd.DataFrame  # index person_id: age_at_diagnosis, race, ethnicity, er/pr/her2_status
    pam50: pd.Series  # person_id -> subtype (expression available)
    scores: pd.DataFrame  # person_id -> immune, stromal, estimate
    actionability: pd.DataFrame
    top_genes: int = 30
    pair_genes: int = 10
    hotspot_min_fraction: float = 0.02


def _num(v: float, digits: int = 4) -> str:
    return "NA" if v is None or not np.isfinite(v) else f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{round(v, digits)}"


class Builder:
    def __init__(self, cdm_name: str):
        self.cdm_name = cdm_name
        self.rows: list[dict] = []
        self.settings: list[dict] = []

    def new(self, result_type: str) -> int:
        rid = len(self.settings) + 1
        self.settings.append({"result_id": rid, "result_type": result_type, "package_name": "optima-federated",
                              "package_version": __version__})
        return rid

    def add(self, rid, variable_name, variable_level, estimate_name, estimate_type, value, *, group=("overall", "overall"),
            strata=("overall", "overall"), additional=("overall", "overall")):
        self.rows.append({"result_id": rid, "cdm_name": self.cdm_name, "group_name": group[0], "group_level": group[1],
                          "strata_name": strata[0], "strata_level": strata[1], "variable_name": variable_name,
                          "variable_level": variable_level, "estimate_name": estimate_name,
                          "estimate_type": estimate_type, "estimate_value": value,
                          "additional_name": additional[0], "additional_level": additional[1]})

    def count(self, rid, variable_name, variable_level, n, total=None, **kw):
        self.add(rid, variable_name, variable_level, "count", "integer", str(int(n)), **kw)
        if total:
            self.add(rid, variable_name, variable_level, "percentage", "percentage", _num(100.0 * n / total, 4), **kw)


def build(inp: Inputs, cdm_name: str):
    from optima_common.results import SummarisedResult

    b = Builder(cdm_name)
    n = len(inp.persons)
    ns = inp.variants[inp.variants["non_silent"]]
    per_gene = ns.groupby("gene")["person_id"].nunique()
    per_gene = per_gene.sort_values(ascending=False, kind="mergesort")
    top = list(per_gene.index[: inp.top_genes])
    # mutation_frequency
    rid = b.new("mutation_frequency")
    b.count(rid, "number subjects", None, n)
    for g in top:
        b.count(rid, "gene", g, per_gene[g], n)
    # variant_classification
    rid = b.new("variant_classification")
    b.count(rid, "number subjects", None, n)
    vc = inp.variants[inp.variants["gene"].isin(top)].groupby(["gene", "classification"])["person_id"].nunique()
    for (g, cls), k in vc.items():
        b.count(rid, g, cls, k)
    # hotspot_counts (by ER and by HER2)
    rid = b.new("hotspot_counts")
    hs = ns.assign(hotspot=ns["gene"] + " " + ns["protein_change"])
    hs = hs[ns["protein_change"].fillna("") != ""]
    freq = hs.groupby("hotspot")["person_id"].nunique()
    listed = list(HOTSPOTS) + sorted(h for h, k in freq.items() if k >= inp.hotspot_min_fraction * n and h not in HOTSPOTS)
    clin = inp.clinical.reindex(inp.persons)
    for col, name in ((None, "overall"), ("er_status", "er_status"), ("her2_status", "her2_status")):
        levels = ["overall"] if col is None else ["positive", "negative", "unknown"]
        status = pd.Series("overall", index=inp.persons) if col is None else clin[col].fillna("unknown")
        for lv in levels:
            members = status.index[status == lv]
            strata = (name, lv)
            b.count(rid, "number subjects", None, len(members), strata=strata)
            for h in listed:
                k = hs.loc[(hs["hotspot"] == h) & hs["person_id"].isin(members), "person_id"].nunique()
                b.count(rid, "hotspot", h, k, strata=strata)
    # cooccurrence of the most mutated genes
    rid = b.new("cooccurrence")
    carriers = {g: set(ns.loc[ns["gene"] == g, "person_id"]) for g in top[: inp.pair_genes]}
    genes = list(carriers)
    for i, a in enumerate(genes):
        for c in genes[i + 1:]:
            both = len(carriers[a] & carriers[c])
            only_a, only_c = len(carriers[a]) - both, len(carriers[c]) - both
            neither = n - both - only_a - only_c
            odds, p = stats.fisher_exact(both, only_a, only_c, neither)
            grp = ("gene_a" + SEP + "gene_b", a + SEP + c)
            b.count(rid, "both mutated", None, both, group=grp)
            b.add(rid, "both mutated", None, "odds_ratio", "numeric", _num(odds), group=grp)
            b.add(rid, "both mutated", None, "p_value", "numeric", _num(p, 6), group=grp)
            b.add(rid, "both mutated", None, "tendency", "character",
                  "co-occurrence" if both * neither > only_a * only_c else "mutual exclusivity", group=grp)
    # actionability, by subtype
    rid = b.new("actionability")
    subtype = combined_subtype(inp)
    act = inp.actionability
    for (gene, variant), rows in act.groupby(["gene", "variant"], sort=True):
        if variant == "any":
            who = set(ns.loc[ns["gene"] == gene, "person_id"])
        else:
            who = set(ns.loc[(ns["gene"] == gene) & (ns["protein_change"] == variant), "person_id"])
        drugs = "; ".join(f"{d} ({lv}, {r})" for d, lv, r in zip(rows["drug"], rows["evidence_level"],
                                                              rows["predicted_response"]))
        add = ("drugs", drugs)
        b.count(rid, gene, variant, len(who), n, additional=add)
        for s in (*SUBTYPES, "unknown"):
            members = set(subtype.index[subtype == s])
            b.count(rid, gene, variant, len(who & members), strata=("subtype", s), additional=add)
    for s in (*SUBTYPES, "unknown"):
        b.count(rid, "number subjects", None, int((subtype == s).sum()), strata=("subtype", s))
    b.count(rid, "number subjects", None, n)
    # molecular_subtype
    rid = b.new("molecular_subtype")
    from site_agent.genomics.subtype import ihc_surrogate

    with_expr = inp.pam50.reindex(inp.persons).dropna()
    no_expr = inp.persons.difference(with_expr.index)
    ihc = ihc_surrogate(clin.loc[no_expr, "er_status"].fillna("unknown"), clin.loc[no_expr, "pr_status"].fillna("unknown"),
                        clin.loc[no_expr, "her2_status"].fillna("unknown"))
    for method, calls, levels in (("pam50", with_expr, SUBTYPES), ("ihc_surrogate", ihc, (*SUBTYPES, "unknown"))):
        grp = ("method", method)
        b.count(rid, "number subjects", None, len(calls), group=grp)
        for s in levels:
            b.count(rid, "subtype", s, int((calls == s).sum()), len(calls), group=grp)
    # immune_infiltration by PAM50 subtype
    rid = b.new("immune_infiltration")
    sc = inp.scores.reindex(with_expr.index)
    for score in ("immune", "stromal", "estimate"):
        grp = ("score", score)
        groups = []
        for s in ("overall", *SUBTYPES):
            v = sc[score] if s == "overall" else sc.loc[with_expr.index[with_expr == s], score]
            strata = ("overall", "overall") if s == "overall" else ("subtype", s)
            _distribution(b, rid, "score", v.to_numpy(), grp, strata)
            if s != "overall" and len(v):
                groups.append(v.to_numpy())
        if len(groups) >= 2:
            h, p, df = stats.kruskal(groups)
            b.add(rid, "kruskal_wallis", None, "statistic", "numeric", _num(h), group=grp)
            b.add(rid, "kruskal_wallis", None, "p_value", "numeric", _num(p, 6), group=grp)
            b.add(rid, "kruskal_wallis", None, "df", "integer", str(df), group=grp)
    # age at diagnosis by race and by ethnicity
    rid = b.new("age_at_diagnosis")
    age = clin["age_at_diagnosis"]
    known = age.dropna()
    _distribution(b, rid, "age at diagnosis", known.to_numpy(), ("overall", "overall"), ("overall", "overall"))
    for col in ("race", "ethnicity"):
        lv = clin.loc[known.index, col].fillna("unknown")
        for level in sorted(set(lv)):
            _distribution(b, rid, "age at diagnosis", known[lv == level].to_numpy(), ("overall", "overall"), (col, level))
    return SummarisedResult.from_records(b.rows, b.settings)


def _distribution(b: Builder, rid, variable, v: np.ndarray, group, strata) -> None:
    b.count(rid, variable, None, len(v), group=group, strata=strata)
    if not len(v):
        return
    q = np.quantile(v, [0.25, 0.5, 0.75])
    for name, val in (("mean", v.mean()), ("sd", v.std(ddof=1) if len(v) > 1 else np.nan), ("q25", q[0]),
                      ("median", q[1]), ("q75", q[2])):
        b.add(rid, variable, None, name, "numeric", _num(float(val)), group=group, strata=strata)


def combined_subtype(inp: Inputs) -> pd.Series:
    """PAM50 where expression exists, else the IHC surrogate (for the actionability strata)."""
    from site_agent.genomics.subtype import ihc_surrogate

    clin = inp.clinical.reindex(inp.persons)
    ihc = ihc_surrogate(clin["er_status"].fillna("unknown"), clin["pr_status"].fillna("unknown"),
                        clin["her2_status"].fillna("unknown"))
    return inp.pam50.reindex(inp.persons).fillna(ihc)
