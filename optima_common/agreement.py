"""Agreement of NLP-detected metastasis with structured labels: counts, P/R/F1 and their CIs.

Precision = TP/(TP+FP) and recall = TP/(TP+FN) with Wilson score intervals (Wilson 1927; the
same as ``scipy.stats.binomtest(...).proportion_ci("wilson")``); F1 = 2TP/(2TP+FP+FN) with a
percentile interval from a parametric (multinomial) bootstrap of the four cells, seeded so a site
releases the same numbers twice. The coordinator pools TP/FP/FN over sites and recomputes the same.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

Z95 = float(norm.ppf(0.975))
BOOTSTRAP = 2000


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def f1_score(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan


def f1_interval(tp: int, fp: int, fn: int, tn: int, seed: int = 20261203) -> tuple[float, float]:
    n = tp + fp + fn + tn
    if n == 0 or tp + fp + fn == 0:
        return (math.nan, math.nan)
    draws = np.random.default_rng(seed).multinomial(n, np.array([tp, fp, fn, tn]) / n, size=BOOTSTRAP)
    den = 2 * draws[:, 0] + draws[:, 1] + draws[:, 2]
    f1 = np.where(den > 0, 2 * draws[:, 0] / np.maximum(den, 1), 0.0)
    lo, hi = np.quantile(f1, [0.025, 0.975])
    return (float(lo), float(hi))


def metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """precision, recall, f1 and their 95 % CIs (NaN where undefined)."""
    p_lo, p_hi = wilson(tp, tp + fp)
    r_lo, r_hi = wilson(tp, tp + fn)
    f_lo, f_hi = f1_interval(tp, fp, fn, tn)
    return {
        "precision": tp / (tp + fp) if tp + fp else math.nan, "precision_95CI_lower": p_lo, "precision_95CI_upper": p_hi,
        "recall": tp / (tp + fn) if tp + fn else math.nan, "recall_95CI_lower": r_lo, "recall_95CI_upper": r_hi,
        "f1": f1_score(tp, fp, fn), "f1_95CI_lower": f_lo, "f1_95CI_upper": f_hi,
    }
