"""ESTIMATE-style immune and stromal scores: single-sample rank enrichment (ssGSEA, weight 0.25).

As in ESTIMATE (Yoshihara et al. 2013; Barbie et al. 2009): genes ranked within each sample,
walked from the highest; the running sum steps up by rank^0.25 (normalised) at a signature gene
and down by 1/(N - N_S) elsewhere; the score is the sum of the running sum over all N positions.
Summing the running sum in closed form gives, with r the ascending within-sample ranks:

    ES = sum_{g in S} r_g^1.25 / sum_{g in S} r_g^0.25  -  sum_{g not in S} r_g / (N - N_S)

so only the signature genes' ranks are needed (no N x samples cumulative sums). ESTIMATE score =
immune + stromal. ESTIMATE first restricts to its 10,412 common genes; we use the whole matrix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from site_agent.genomics import reference

ALPHA = 0.25


def scores(values: pd.DataFrame, chunk: int = 200) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Per sample: immune, stromal, estimate; and per signature the genes missing from the matrix."""
    sigs = reference.estimate_signatures()
    n = values.shape[0]
    out = {}
    missing = {}
    rows = {k: values.index.get_indexer([g for g in genes if g in values.index]) for k, genes in sigs.items()}
    for k, genes in sigs.items():
        missing[k] = [g for g in genes if g not in values.index]
    arr = values.to_numpy(dtype=float)
    res = {k: np.empty(arr.shape[1]) for k in sigs}
    total = n * (n + 1) / 2.0
    for start in range(0, arr.shape[1], chunk):
        r = rankdata(arr[:, start:start + chunk], axis=0)  # ascending within each sample
        for k, idx in rows.items():
            rs = r[idx]
            w = rs ** ALPHA
            hit = (w * rs).sum(axis=0) / w.sum(axis=0)
            miss = (total - rs.sum(axis=0)) / (n - len(idx))
            res[k][start:start + chunk] = hit - miss
    out = pd.DataFrame({"immune": res["immune"], "stromal": res["stromal"]}, index=values.columns)
    out["estimate"] = out["immune"] + out["stromal"]
    return out, missing
