"""What a site's evaluation reply may carry: small-cell protection of confusion matrices and score histograms.

A site evaluates the global model on its test (and validation) split and answers with scalar
metrics. Counts in that answer are cells: nothing between 1 and ``min_cell`` - 1 may leave the
site, and no released number may let anyone recompute such a count. :func:`release_evaluation`
applies, per evaluation group (key prefix such as ``stage1_``, ``val_stage1_`` or ``""``):

- Confusion matrix ``{p}cm_i_j``: sent whole when every cell is 0 or at least ``min_cell``;
  otherwise WITHHELD whole, together with the group's site-computed headline metrics
  (``{p}accuracy``, ``precision``, ``recall``, ``f1``, ``auroc``: accuracy times n is the
  trace, per-class recall times a row total is a cell), and the flag ``{p}cm_withheld = 1``
  is sent instead. No row totals are sent for a withheld matrix.
- Score histogram ``{p}scorehist_*``: withheld whole (flag ``{p}hist_withheld = 1``) when a
  class has between 1 and ``min_cell`` - 1 cases (the class total is a cell, and with n the
  other class's total gives it too); otherwise merged to cells of 0 or at least ``min_cell``
  (:func:`optima_common.score_histogram.release`). When the group's 2x2 matrix is sent as
  well, no interval straddles the score 0.5 (the argmax threshold): each side is merged on its
  own, so the matrix cells never split a released interval into a smaller, derivable piece.
  When the matrix is withheld the intervals are merged across 0.5, so a small cell (e.g. 2
  false negatives) lies inside an interval of at least ``min_cell`` and cannot be bounded to
  its value.
- ``num-examples`` (n): sent as 0 when it is between 1 and ``min_cell`` - 1 (then every cell
  is small and everything count-derived is withheld).

Other scalars (losses) pass unchanged. The flags say only that a group was withheld.
"""

from __future__ import annotations

from optima_common import score_histogram as H

HEADLINE = ("accuracy", "precision", "recall", "f1", "auroc")
CM_WITHHELD = "cm_withheld"
HIST_WITHHELD = "hist_withheld"
FLAGS = (CM_WITHHELD, HIST_WITHHELD)


def cm_groups(metrics: dict) -> dict[str, dict[tuple[int, int], float]]:
    """``{prefix}cm_{i}_{j}`` keys -> {prefix: {(i, j): count}}."""
    groups: dict[str, dict[tuple[int, int], float]] = {}
    for key, value in metrics.items():
        head, sep, tail = key.rpartition("cm_")
        if not sep or (head and not head.endswith("_")):
            continue
        parts = tail.split("_")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            groups.setdefault(head, {})[(int(parts[0]), int(parts[1]))] = float(value)
    return groups


def is_flag(key: str) -> bool:
    return key.endswith(FLAGS)


def release_evaluation(n: int, metrics: dict, min_cell: int) -> tuple[int, dict]:
    """(n, metrics) as they may leave the site under ``min_cell`` (see the module text)."""
    small = lambda c: 0 < round(float(c)) < min_cell
    everything = small(n)
    cms, hists = cm_groups(metrics), H.parse(metrics)
    cm_keys = {f"{p}cm_{i}_{j}" for p, cells in cms.items() for i, j in cells}
    out = {k: v for k, v in metrics.items() if k not in cm_keys and H.TAG not in k}
    sent_2x2 = set()
    for prefix, cells in cms.items():
        if everything or any(small(v) for v in cells.values()):
            out[f"{prefix}{CM_WITHHELD}"] = 1.0
            for name in HEADLINE:
                out.pop(f"{prefix}{name}", None)
        else:
            out.update({f"{prefix}cm_{i}_{j}": v for (i, j), v in cells.items()})
            if set(cells) <= {(0, 0), (0, 1), (1, 0), (1, 1)}:
                sent_2x2.add(prefix)
    if everything:
        for key in [k for k in out if k.endswith(HEADLINE)]:
            out.pop(key)
    for prefix, cells in hists.items():
        fine = [[0] * H.FINE, [0] * H.FINE]
        for cls, lo, hi, c in cells:
            if hi - lo != 1:
                raise ValueError(f"{prefix}{H.TAG}: a site's raw histogram must have single bins")
            fine[cls][lo] = c
        if everything or any(small(sum(f)) for f in fine):
            out[f"{prefix}{HIST_WITHHELD}"] = 1.0
            continue
        breaks = (H.FINE // 2,) if prefix in sent_2x2 else ()
        released = H.release_class(fine[0], min_cell, 0, breaks) + H.release_class(fine[1], min_cell, 1, breaks)
        out.update(H.cells_to_metrics(prefix, released))
    return (0 if everything else int(n)), out


# --- train replies: the FedAvg weight -----------------------------------------------------
DEFAULT_WEIGHT_BASE = 10


def weight_base(min_cell: int, configured: int | None = None) -> int:
    """The rounding base of a site's FedAvg weight: ``configured`` (node config
    ``fedavg-weight-base``) else :data:`DEFAULT_WEIGHT_BASE`, never below the site's minimum cell count."""
    return max(int(configured) if configured else DEFAULT_WEIGHT_BASE, int(min_cell), 2)


def released_weight(n: int, base: int) -> int:
    """The FedAvg weight a train reply carries instead of the exact training-set size ``n``:
    ``n`` rounded to the nearest multiple of ``base`` (halves up), at least ``base``; 0 stays 0
    (the project's ``nearest_<b>`` rounding, :func:`optima_common.disclosure.rounding.rounded`,
    written in plain Python so that a site's train handler needs no pandas). The training set is
    fixed within a run, so every round of a run sends the same weight."""
    import math

    n, base = int(n), int(base)
    return 0 if n <= 0 else base * max(1, math.floor(n / base + 0.5))
