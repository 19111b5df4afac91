"""Pooled agreement of NLP-detected metastasis with structured labels (``nlp_metastasis_agreement``).

The sites' TP/FP/FN and persons evaluated are summed by :func:`coordinator.pooling.results.pooled_counts`;
here the network's precision, recall and F1 with their CIs are recomputed from those pooled counts with
the sites' own formulas (:mod:`optima_common.agreement`). Where a site withheld one of the counts the
pooled sum is only a lower bound, so no pooled metric is given for that site group (a note says so).
"""

from __future__ import annotations

import pandas as pd

from optima_common.agreement import metrics

AGREEMENT = "nlp_metastasis_agreement"


def pool_agreement(counts: pd.DataFrame, flags: pd.DataFrame, types: pd.Series, pooled_name: str,
                   notes: list[str]) -> pd.DataFrame:
    ids = [int(i) for i, t in types.items() if t == AGREEMENT]
    if not ids:
        return pd.DataFrame()
    rows = []
    c = counts[counts["result_id"].astype(int).isin(ids)]
    lower = flags[flags["result_id"].astype(int).isin(ids) & flags["lower_bound"]]
    for rid in ids:
        mine = c[c["result_id"].astype(int) == rid]
        n_row = mine[mine["variable_name"] == "number subjects"]
        n_bad = lower[(lower["result_id"].astype(int) == rid) & (lower["variable_name"] == "number subjects")]
        for site, g in mine[mine["group_name"] == "metastasis_site"].groupby("group_level"):
            cell = g[g["variable_name"] == "agreement"].set_index("estimate_name")["estimate_value"]
            bad = lower[(lower["result_id"].astype(int) == rid) & (lower["group_level"] == site)
                        & (lower["variable_name"] == "agreement")]
            if len(bad) or len(n_bad) or len(n_row) != 1 or not {"tp_count", "fp_count", "fn_count"} <= set(cell.index):
                notes.append(f"nlp agreement, site {site}: a site withheld a count; no pooled precision/recall/F1")
                continue
            try:
                tp, fp, fn = (int(cell[k]) for k in ("tp_count", "fp_count", "fn_count"))
                n = int(n_row["estimate_value"].iloc[0])
            except ValueError:
                continue
            base = g.iloc[0]
            for name, val in metrics(tp, fp, fn, max(n - tp - fp - fn, 0)).items():
                rows.append({**{k: base[k] for k in ("result_id", "group_name", "group_level", "strata_name",
                                                      "strata_level", "additional_name", "additional_level")},
                             "cdm_name": pooled_name, "variable_name": "agreement", "variable_level": None,
                             "estimate_name": name, "estimate_type": "numeric",
                             "estimate_value": None if pd.isna(val) else f"{val:.4f}"})
    return pd.DataFrame(rows)
