"""Release control for the genomics tables: primary suppression, the shared audit (declared
relations in optima_common/disclosure/genomics.py), then rules for estimates that are functions
of counts in *other* cells, which the audit's derived-estimate rule does not see:

* a co-occurrence pair's odds ratio, p-value, tendency and count are withheld when either gene's
  mutated-persons count (or the number profiled) is withheld: with the margins, Fisher's p-value
  is a one-to-one function of the withheld count;
* a score's Kruskal-Wallis test, and the overall mean/sd of immune scores and of age, are withheld
  when any subgroup count of that table is withheld (degrees of freedom reveal empty groups; the
  overall mean minus the released subgroup sums gives a withheld group's sum).

Only more cells become ``"-"`` after the audit, so its guarantee still holds.
"""

from __future__ import annotations

import pandas as pd

from optima_common import disclosure as shared
from optima_common.results import SUPPRESSED, SummarisedResult


def _type_mask(r: SummarisedResult, rt: str) -> pd.Series:
    ids = r.settings.loc[r.settings["result_type"] == rt, "result_id"]
    return r.data["result_id"].isin(ids)


def linked_rules(r: SummarisedResult) -> SummarisedResult:
    d = r.data.copy()
    hidden = d["estimate_value"] == SUPPRESSED
    mf = _type_mask(r, "mutation_frequency") & (d["estimate_name"] == "count")
    withheld_genes = set(d.loc[mf & hidden & (d["variable_name"] == "gene"), "variable_level"])
    n_hidden = bool((mf & hidden & (d["variable_name"] == "number subjects")).any())
    co = _type_mask(r, "cooccurrence")
    if co.any():
        pair = d.loc[co, "group_level"].str.split(" &&& ")
        bad = pair.map(lambda p: n_hidden or bool(set(p) & withheld_genes))
        cell_hidden = d.loc[co].groupby("group_level")["estimate_value"].transform(lambda v: (v == SUPPRESSED).any())
        d.loc[bad[bad | cell_hidden].index, "estimate_value"] = SUPPRESSED
    for rt, group_col in (("immune_infiltration", "group_level"), ("age_at_diagnosis", "strata_name")):
        m = _type_mask(r, rt)
        if not m.any():
            continue
        sub = d[m]
        counts = sub[sub["estimate_name"] == "count"]
        bad_groups = set(counts.loc[counts["estimate_value"] == SUPPRESSED, group_col])
        if rt == "age_at_diagnosis":  # any stratum withheld: the overall mean/sd go
            if bad_groups:
                d.loc[m & (d["strata_name"] == "overall") & d["estimate_name"].isin(["mean", "sd"]),
                      "estimate_value"] = SUPPRESSED
        else:
            hit = m & d["group_level"].isin(bad_groups) & (
                (d["variable_name"] == "kruskal_wallis")
                | ((d["strata_name"] == "overall") & d["estimate_name"].isin(["mean", "sd"])))
            d.loc[hit, "estimate_value"] = SUPPRESSED
    return r.with_data(d)


def release(raw: SummarisedResult, min_cell_count: int) -> shared.Protection:
    from site_agent.suppression import suppress

    primary = suppress(raw, min_cell_count)
    prot = shared.protect(raw, primary, min_cell_count)
    prot.result = linked_rules(prot.result)
    return prot
