"""PAM50-style nearest-centroid subtypes (Spearman, genefu's ``pam50``) and an IHC surrogate.

The expression (log2 TPM or log2 CPM) is median-centred gene by gene across the site's samples,
as PAM50 expects centred data; each sample gets the subtype whose centroid it correlates with best
(Spearman over the PAM50 genes present). Centring assumes a cohort with a usual subtype mix
(genefu's note on ``pam50.robust``); a site of only one subtype should rely on the IHC surrogate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from site_agent.genomics import reference

MIN_GENES = 40


def spearman_to_centroids(values: pd.DataFrame, *, center: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Correlation of every sample (column) with each centroid; also the PAM50 genes missing."""
    cent = reference.pam50_centroids()
    present = [g for g in cent.index if g in values.index]
    missing = [g for g in cent.index if g not in values.index]
    x = values.loc[present].to_numpy(dtype=float)
    if center:
        x = x - np.median(x, axis=1, keepdims=True)
    rx = rankdata(x, axis=0)
    rc = rankdata(cent.loc[present].to_numpy(), axis=0)
    rx = (rx - rx.mean(axis=0)) / rx.std(axis=0)
    rc = (rc - rc.mean(axis=0)) / rc.std(axis=0)
    cor = rx.T @ rc / len(present)
    return pd.DataFrame(cor, index=values.columns, columns=cent.columns), missing


def pam50(values: pd.DataFrame, *, center: bool = True) -> tuple[pd.Series, list[str]]:
    cor, missing = spearman_to_centroids(values, center=center)
    if len(reference.pam50_centroids()) - len(missing) < MIN_GENES:
        return pd.Series(dtype=object), missing
    return cor.idxmax(axis=1), missing


def ihc_surrogate(er: pd.Series, pr: pd.Series, her2: pd.Series) -> pd.Series:
    """St Gallen 2013-style surrogate without Ki-67: HR+/HER2- with PR+ LumA, PR- LumB; HR+/HER2+
    LumB; HR-/HER2+ Her2; triple negative Basal; anything unknown: unknown."""
    hr_pos = (er == "positive") | (pr == "positive")
    hr_neg = (er == "negative") & (pr == "negative")
    out = pd.Series("unknown", index=er.index, dtype=object)
    out[hr_pos & (her2 == "negative") & (pr == "positive")] = "LumA"
    out[hr_pos & (her2 == "negative") & (pr != "positive")] = "LumB"
    out[hr_pos & (her2 == "positive")] = "LumB"
    out[hr_neg & (her2 == "positive")] = "Her2"
    out[hr_neg & (her2 == "negative")] = "Basal"
    return out
