"""Federated AUROC from per-site histograms of a classifier's score (pure Python, no numpy).

A site never sends its scores. It counts, for each class (0 negative, 1 positive), its cases
whose positive-class score falls in each of :data:`FINE` equal bins of [0, 1], then releases
those counts over INTERVALS of adjacent bins (:func:`release`), under the keys
``{prefix}scorehist_{cls}_{lo}_{hi}``: the cases of class ``cls`` with score in
[lo/FINE, hi/FINE). Each class has its own intervals. The coordinator collects every site's intervals and computes

    AUROC = (pairs whose positive interval lies above the negative one
             + half the pairs whose intervals overlap) / (P * N)

Pairs in disjoint intervals are ordered exactly as their scores are; a pair in overlapping
intervals counts one half whatever its order. The error against the AUROC of the pooled scores
is therefore at most ``bound = overlapping pairs / (2 * P * N)``, reported next to the value. It
shrinks with the interval width: with one fine bin per interval it is the tie mass of bins of
width 1/FINE.

Released counts: each cell is a count of cases, so it leaves the site under the site's minimum
cell count (node config ``min-cell-count``, else the site TOML's ``min_cell_count``; at least 2). :func:`release` merges adjacent bins
of each class until every released cell is 0 or at least that minimum. Nothing is suppressed,
so no cell can be recovered by subtraction. Declared relation: the cells of one class sum to that
class's row of the confusion matrix the site also sends.
"""

from __future__ import annotations

import itertools
import math

FINE = 32
TAG = "scorehist_"


def histogram(labels, scores, bins: int = FINE) -> tuple[list[int], list[int]]:
    """(negative counts, positive counts) per bin of [0, 1]; a score of 1 falls in the last bin."""
    neg, pos = [0] * bins, [0] * bins
    for y, s in zip(labels, scores):
        b = max(min(int(float(s) * bins), bins - 1), 0) if not math.isnan(float(s)) else 0
        (pos if int(y) == 1 else neg)[b] += 1
    return neg, pos


Cells = list[tuple[int, int, int, int]]  # (cls, lo, hi, count): cases of class cls in bins lo..hi-1


def release_class(counts: list[int], min_cell: int, cls: int, breaks: tuple[int, ...] = ()) -> Cells:
    """One class's bins merged, left to right, into intervals whose count is 0 or at least
    ``min_cell`` (empty bins form empty intervals); a short remainder joins the last non-empty
    interval. Only a class with fewer than ``min_cell`` cases in all keeps a smaller cell (its
    total; :mod:`optima_common.eval_release` withholds such a histogram). ``breaks``: bin edges
    no interval may straddle (each segment merged on its own), dropped when a segment's count
    is between 1 and ``min_cell`` - 1."""
    edges = [0, *sorted(b for b in breaks if 0 < b < len(counts)), len(counts)]
    segments = list(itertools.pairwise(edges))
    if len(segments) > 1 and all(sum(counts[a:b]) == 0 or sum(counts[a:b]) >= min_cell for a, b in segments):
        return [(c, lo + a, hi + a, n) for a, b in segments
                for c, lo, hi, n in release_class(counts[a:b], min_cell, cls)]
    runs: list[list[int]] = []
    lo, acc = 0, 0
    for b, c in enumerate(counts):
        acc += c
        if acc == 0:
            if runs and runs[-1][2] == 0:
                runs[-1][1] = b + 1
            else:
                runs.append([b, b + 1, 0])
            lo = b + 1
        elif acc >= min_cell:
            runs.append([lo, b + 1, acc])
            lo, acc = b + 1, 0
    if acc:
        while runs and runs[-1][2] == 0:
            lo = runs.pop()[0]
        if runs:
            prev = runs.pop()
            lo, acc = prev[0], prev[2] + acc
        runs.append([lo, len(counts), acc])
    return [(cls, lo, hi, c) for lo, hi, c in runs]


def release(neg: list[int], pos: list[int], min_cell: int) -> Cells:
    """Each class's histogram merged by :func:`release_class`."""
    return release_class(neg, min_cell, 0) + release_class(pos, min_cell, 1)


def release_metrics(metrics: dict, min_cell: int) -> dict:
    """A site's metrics with every score histogram merged by :func:`release` (what leaves the site)."""
    hists = parse(metrics)
    out = {k: v for k, v in metrics.items() if TAG not in k}
    for prefix, cells in hists.items():
        fine = [[0] * FINE, [0] * FINE]
        for cls, lo, hi, c in cells:
            if hi - lo != 1:
                raise ValueError(f"{prefix}{TAG}: a site's raw histogram must have single bins")
            fine[cls][lo] = c
        out.update(cells_to_metrics(prefix, release(fine[0], fine[1], max(int(min_cell), 1))))
    return out


def to_metrics(prefix: str, neg: list[int], pos: list[int]) -> dict[str, float]:
    """The raw (single-bin) histogram as metric keys; it leaves the site only through :func:`release_metrics`."""
    return cells_to_metrics(prefix, single_bins(neg, pos))


def single_bins(neg: list[int], pos: list[int]) -> Cells:
    return [(0, b, b + 1, n) for b, n in enumerate(neg)] + [(1, b, b + 1, p) for b, p in enumerate(pos)]


def cells_to_metrics(prefix: str, cells: Cells) -> dict[str, float]:
    return {f"{prefix}{TAG}{cls}_{lo}_{hi}": float(c) for cls, lo, hi, c in cells}


def parse(metrics: dict) -> dict[str, Cells]:
    """``{prefix: cells}`` from a site's metric keys."""
    found: dict[str, Cells] = {}
    for key, value in metrics.items():
        head, sep, tail = key.rpartition(TAG)
        parts = tail.split("_")
        if not sep or len(parts) != 3 or not all(x.isdigit() for x in parts):
            continue
        cls, lo, hi = map(int, parts)
        found.setdefault(head, []).append((cls, lo, hi, round(float(value))))
    return {h: sorted(cells) for h, cells in found.items()}


def auroc_cells(cells: Cells) -> tuple[float, float]:
    """(AUROC, bound on its error against the exact AUROC of the scores) from the intervals of
    any sites; NaN without both classes."""
    neg = [(lo, hi, c) for cls, lo, hi, c in cells if cls == 0 and c]
    pos = [(lo, hi, c) for cls, lo, hi, c in cells if cls == 1 and c]
    n_tot, p_tot = sum(c for *_, c in neg), sum(c for *_, c in pos)
    if n_tot == 0 or p_tot == 0:
        return float("nan"), float("nan")
    wins = ties = 0.0
    for plo, phi, p in pos:
        for nlo, nhi, n in neg:
            if nhi <= plo:
                wins += p * n
            elif phi > nlo:
                ties += p * n
    pairs = float(n_tot * p_tot)
    return (wins + ties / 2.0) / pairs, ties / (2.0 * pairs)


def auroc(neg: list[int], pos: list[int]) -> tuple[float, float]:
    """:func:`auroc_cells` of one single-bin histogram."""
    return auroc_cells(single_bins(neg, pos))


def pooled_metrics(site_metrics: list[dict]) -> dict[str, float]:
    """``{prefix}auroc_pooled`` and ``{prefix}auroc_pooled_bound`` for every histogram prefix the sites sent."""
    by_prefix: dict[str, Cells] = {}
    for m in site_metrics:
        for prefix, cells in parse(m).items():
            by_prefix.setdefault(prefix, []).extend(cells)
    out = {}
    for prefix, cells in by_prefix.items():
        value, bound = auroc_cells(cells)
        if not math.isnan(value):
            out.update({f"{prefix}auroc_pooled": value, f"{prefix}auroc_pooled_bound": bound})
    return out
