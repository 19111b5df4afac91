"""Fisher's exact test and Kruskal-Wallis, written out (the tests compare them with SciPy)."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import chdtrc, gammaln


def fisher_exact(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """Two-sided Fisher exact test of [[a, b], [c, d]]: (sample odds ratio, p).

    p sums the hypergeometric probabilities of all tables with the same margins that are no more
    likely than the observed one (relative tolerance 1e-7, as R and SciPy do)."""
    r1, c1, n = a + b, a + c, a + b + c + d
    lo, hi = max(0, c1 - (n - r1)), min(r1, c1)
    x = np.arange(lo, hi + 1)
    logp = (gammaln(r1 + 1) + gammaln(n - r1 + 1) + gammaln(c1 + 1) + gammaln(n - c1 + 1) - gammaln(n + 1)
            - gammaln(x + 1) - gammaln(r1 - x + 1) - gammaln(c1 - x + 1) - gammaln(n - r1 - c1 + x + 1))
    p = np.exp(logp)
    obs = p[a - lo]
    pval = float(min(1.0, p[p <= obs * (1 + 1e-7)].sum()))
    if b * c == 0:
        odds = math.inf if a * d > 0 else math.nan
    else:
        odds = a * d / (b * c)
    return odds, pval


def kruskal(groups: list[np.ndarray]) -> tuple[float, float, int]:
    """Kruskal-Wallis H (tie-corrected), p from chi-square with k-1 df."""
    from scipy.stats import rankdata

    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    allv = np.concatenate(groups)
    n = len(allv)
    r = rankdata(allv)
    h, start = 0.0, 0
    for g in groups:
        rs = r[start:start + len(g)]
        h += rs.sum() ** 2 / len(g)
        start += len(g)
    h = 12.0 / (n * (n + 1)) * h - 3 * (n + 1)
    _, counts = np.unique(allv, return_counts=True)
    tie = 1 - (counts ** 3 - counts).sum() / (n ** 3 - n)
    h = h / tie if tie > 0 else math.nan
    df = len(groups) - 1
    return float(h), float(chdtrc(df, h)), df
