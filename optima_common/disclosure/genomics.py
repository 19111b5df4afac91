"""Declared relations of the genomics result types (``site-agent genomics profile``).

Counts are persons. What holds, table by table (N = mutation_frequency's number subjects):

* mutation_frequency: each gene's mutated persons <= N (the unmutated are protected);
* variant_classification: each cell <= N; a non-silent class of gene g <= g's mutated persons
  (complement protected) and g's mutated persons <= the sum of g's non-silent classes;
* hotspot_counts: ER (HER2) levels add up to the overall row, for every hotspot and for the
  number subjects; a cell <= its stratum's subjects (complement protected); an overall hotspot
  <= its gene's mutated persons;
* cooccurrence: both <= each gene's mutated persons (only-A, only-B protected) and
  neither = N - A - B + both (protected);
* actionability: subtype strata add up to the overall row; a cell <= its stratum's subjects;
  the overall "GENE any" row is the gene's mutated persons, a "GENE CHANGE" row is the hotspot's;
* molecular_subtype: subtypes add up to each method's subjects; the methods add up to N;
* immune_infiltration: subtypes add up to the overall count; the three scores count the same
  persons; a subtype's count is molecular_subtype's PAM50 count;
* age_at_diagnosis: race (ethnicity) levels add up to the overall count, which is <= N.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from optima_common.disclosure import system as S
from optima_common.disclosure.frame import key

#: GDC Variant_Classification values that change the protein (same list as site_agent.genomics.readers)
NON_SILENT = ("Frame_Shift_Del", "Frame_Shift_Ins", "In_Frame_Del", "In_Frame_Ins", "Missense_Mutation",
              "Nonsense_Mutation", "Splice_Site", "Translation_Start_Site", "Nonstop_Mutation")
SUBJECTS = "number subjects"


def _c(f: pd.DataFrame, rt: str) -> pd.DataFrame:
    return f[f["is_count"] & (f["result_type"] == rt) & (f["estimate_name"] == "count")]


def _frame(rows: pd.DataFrame, keys) -> pd.DataFrame:
    return pd.DataFrame({"key": list(keys), "row": rows["row"].to_numpy()})


def _subjects(f) -> int | None:
    m = _c(f, "mutation_frequency")
    m = m[m["variable_name"] == SUBJECTS]
    return int(m["row"].iat[0]) if len(m) == 1 else None


def _gene_rows(f) -> dict[str, int]:
    m = _c(f, "mutation_frequency")
    m = m[m["variable_name"] == "gene"]
    return dict(zip(m["variable_level"], m["row"]))


def _strata_sum(s, c: pd.DataFrame, strata_name: str, cols: list[str], label: str) -> None:
    sub = c[(c["strata_name"] == "overall") | (c["strata_name"] == strata_name)]
    k = key(sub, ["result_id", "group_level", "additional_level"] + cols)
    tot = sub["strata_name"] == "overall"
    S.sum_equals(s, _frame(sub[~tot], k[~tot]), _frame(sub[tot], k[tot]), label)


def _within_stratum(s, c: pd.DataFrame, label: str) -> None:
    subj = c["variable_name"] == SUBJECTS
    k = key(c, ["result_id", "group_level", "strata_name", "strata_level"])
    S.each_at_most(s, _frame(c[~subj], k[~subj]), _frame(c[subj], k[subj]), label)


def mutation_frequency(f, s, co):
    c = _c(f, "mutation_frequency")
    _within_stratum(s, c, "mutated persons of a gene <= profiled persons (unmutated protected)")


def variant_classification(f, s, co):
    c = _c(f, "variant_classification")
    _within_stratum(s, c, "persons with a variant class <= profiled persons (complement protected)")
    genes = _gene_rows(f)
    cells = c[(c["variable_name"] != SUBJECTS) & c["variable_level"].isin(NON_SILENT) & c["variable_name"].isin(genes)]
    if len(cells):
        S.at_most(s, cells["row"].to_numpy(), np.array([genes[g] for g in cells["variable_name"]]),
                  "a gene's class <= its mutated persons (complement protected)", protect=True)
        parts = _frame(cells, cells["variable_name"])
        totals = pd.DataFrame({"key": list(genes), "row": list(genes.values())})
        S.sum_at_least(s, parts, totals, "a gene's mutated persons <= sum of its non-silent classes")


def hotspot_counts(f, s, co):
    c = _c(f, "hotspot_counts")
    for strata in ("er_status", "her2_status"):
        _strata_sum(s, c, strata, ["variable_name", "variable_level"], f"hotspots: {strata} levels add up")
    _within_stratum(s, c, "hotspot persons <= stratum's persons (complement protected)")
    genes = _gene_rows(f)
    ov = c[(c["strata_name"] == "overall") & (c["variable_name"] == "hotspot")]
    gene = ov["variable_level"].str.split(" ").str[0]
    ok = gene.isin(genes)
    S.at_most(s, ov.loc[ok, "row"].to_numpy(), np.array([genes[g] for g in gene[ok]], dtype=np.int64),
              "a hotspot's persons <= its gene's mutated persons (complement protected)", protect=True)


def cooccurrence(f, s, co):
    c = _c(f, "cooccurrence")
    genes, n = _gene_rows(f), _subjects(f)
    for gl, r in zip(c["group_level"], c["row"]):
        a, b = gl.split(" &&& ")
        if a not in genes or b not in genes:
            continue
        S.at_most(s, [r, r], [genes[a], genes[b]], f"both {a} and {b} <= each (only one protected)", protect=True)
        if n is not None:
            h = s.new_hidden(1, protect=True)
            s.add(np.zeros(5), [r, genes[a], genes[b], n, int(h[0])], [1.0, -1.0, -1.0, 1.0, -1.0], 1,
                  f"neither {a} nor {b} = N - {a} - {b} + both (protected)")


def actionability(f, s, co):
    c = _c(f, "actionability")
    _strata_sum(s, c, "subtype", ["variable_name", "variable_level"], "actionability: subtypes add up")
    _within_stratum(s, c, "actionable persons <= stratum's persons (complement protected)")
    ov = c[(c["strata_name"] == "overall") & (c["variable_name"] != SUBJECTS)]
    genes = _gene_rows(f)
    anyrow = ov[(ov["variable_level"] == "any") & ov["variable_name"].isin(genes)]
    S.identical(s, anyrow["row"].to_numpy(), np.array([genes[g] for g in anyrow["variable_name"]], dtype=np.int64),
                "actionability 'GENE any' = the gene's mutated persons")
    h = _c(f, "hotspot_counts")
    h = h[(h["strata_name"] == "overall") & (h["variable_name"] == "hotspot")]
    hot = dict(zip(h["variable_level"], h["row"]))
    name = ov["variable_name"] + " " + ov["variable_level"].fillna("")
    ok = name.isin(hot)
    S.identical(s, ov.loc[ok, "row"].to_numpy(), np.array([hot[x] for x in name[ok]], dtype=np.int64),
                "actionability 'GENE CHANGE' = the hotspot's persons")
    n = _subjects(f)
    tot = c[(c["strata_name"] == "overall") & (c["variable_name"] == SUBJECTS)]
    if n is not None and len(tot):
        S.identical(s, tot["row"].to_numpy(), np.array([n] * len(tot)), "actionability subjects = profiled persons")


def molecular_subtype(f, s, co):
    c = _c(f, "molecular_subtype")
    subj = c["variable_name"] == SUBJECTS
    k = key(c, ["result_id", "group_level"])
    S.sum_equals(s, _frame(c[~subj], k[~subj]), _frame(c[subj], k[subj]), "subtypes add up to the method's persons")
    n = _subjects(f)
    if n is not None and subj.sum():
        parts = pd.DataFrame({"key": "all", "row": c.loc[subj, "row"].to_numpy()})
        S.sum_equals(s, parts, pd.DataFrame({"key": ["all"], "row": [n]}), "methods add up to the profiled persons")


def immune_infiltration(f, s, co):
    c = _c(f, "immune_infiltration")
    _strata_sum(s, c, "subtype", ["variable_name"], "immune scores: subtypes add up")
    first = c[c["group_level"] == "immune"]
    for other in ("stromal", "estimate"):
        m = first.merge(c[c["group_level"] == other], on=["strata_name", "strata_level"], suffixes=("_a", "_b"))
        S.identical(s, m["row_a"].to_numpy(), m["row_b"].to_numpy(), "the three scores count the same persons")
    ms = _c(f, "molecular_subtype")
    ms = ms[ms["group_level"] == "pam50"]
    ref = {("subtype", lv): r for lv, r in zip(ms.loc[ms["variable_name"] == "subtype", "variable_level"],
                                               ms.loc[ms["variable_name"] == "subtype", "row"])}
    tot = ms.loc[ms["variable_name"] == SUBJECTS, "row"]
    if len(tot):
        ref[("overall", "overall")] = int(tot.iat[0])
    pairs = [(r, ref[(sn, sl)]) for sn, sl, r in zip(first["strata_name"], first["strata_level"], first["row"])
             if (sn, sl) in ref]
    if pairs:
        a, b = zip(*pairs)
        S.identical(s, a, b, "immune score counts = PAM50 subtype counts")


def age_at_diagnosis(f, s, co):
    c = _c(f, "age_at_diagnosis")
    for strata in ("race", "ethnicity"):
        _strata_sum(s, c, strata, ["variable_name"], f"age at diagnosis: {strata} levels add up")
    n = _subjects(f)
    ov = c[c["strata_name"] == "overall"]
    if n is not None and len(ov):
        S.at_most(s, ov["row"].to_numpy(), np.array([n] * len(ov)), "persons with an age <= profiled persons",
                  protect=True)


DECLARATIONS = {"mutation_frequency": mutation_frequency, "variant_classification": variant_classification,
                "hotspot_counts": hotspot_counts, "cooccurrence": cooccurrence, "actionability": actionability,
                "molecular_subtype": molecular_subtype, "immune_infiltration": immune_infiltration,
                "age_at_diagnosis": age_at_diagnosis}
