"""Classification metrics of a site's model (aggregates only: nothing per image leaves here).

``classification_metrics(y_true, probs, class_names)`` gives ``accuracy`` and macro
``precision``, ``recall``, ``f1``, ``auroc``, plus ``per_class`` and ``confusion_matrix``.

Conventions (those of scikit-learn with ``labels=`` every class and ``zero_division=0``):
- macro precision/recall/F1 average over ALL classes, present in ``y_true`` or not (a class the
  test split lacks scores 0 and pulls the mean down; :func:`check_test_split` refuses such a
  split for reporting rather than hide it);
- a per-class precision/recall/F1 with nothing to divide by is 0;
- a per-class AUROC is ``None`` (null in JSON) when the class is absent from ``y_true`` or is
  the only class present (one-vs-rest ROC undefined); the macro AUROC is the mean of the
  defined ones, ``None`` when none is;
- two classes: ``auroc`` is the ordinary binary AUROC of the second class's probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)


def _check(y_true, probs, class_names) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[0] != len(y) or p.shape[1] != len(class_names):
        raise ValueError(f"probs must be (n, {len(class_names)}) for {len(y)} labels, got {p.shape}")
    if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
        raise ValueError("labels outside 0..n_classes-1")
    return y, p


def _auroc(y: np.ndarray, p: np.ndarray, k: int) -> float | None:
    pos = y == k
    if pos.all() or not pos.any():
        return None
    return float(roc_auc_score(pos.astype(int), p[:, k]))


def classification_metrics(y_true, probs, class_names) -> dict:
    y, p = _check(y_true, probs, class_names)
    n_classes = len(class_names)
    pred = p.argmax(axis=1) if len(y) else np.zeros(0, int)
    labels = list(range(n_classes))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    aurocs = [_auroc(y, p, k) for k in labels]
    macro = lambda values: float(np.mean(values)) if len(y) else None
    defined = [a for a in aurocs if a is not None]
    if n_classes == 2:
        auroc = aurocs[1]
    else:
        auroc = float(np.mean(defined)) if defined else None
    return {
        "n": len(y),
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "precision": macro(prec),
        "recall": macro(rec),
        "f1": macro(f1),
        "auroc": auroc,
        "per_class": {name: {"precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]),
                             "auroc": aurocs[k], "support": int(support[k])}
                      for k, name in enumerate(class_names)},
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist() if len(y) else
        [[0] * n_classes for _ in labels],
        "class_names": list(class_names),
    }


HEADLINE = ("accuracy", "precision", "recall", "f1", "auroc")


def summary_metrics(metrics: dict, *, confusion: bool = True) -> dict[str, float]:
    """The scalar headline numbers (for Flower MetricRecords: no None, no nesting), plus the
    confusion matrix as ``cm_<true>_<predicted>`` counts so the coordinator can pool the sites'
    matrices instead of averaging their macro metrics."""
    out = {k: float(metrics[k]) for k in HEADLINE if metrics.get(k) is not None}
    if confusion:
        for i, row in enumerate(metrics["confusion_matrix"]):
            for j, v in enumerate(row):
                out[f"cm_{i}_{j}"] = float(v)
    return out


def positive_class_metrics(metrics: dict, name: str, prefix: str) -> dict[str, float | None]:
    """One class's precision/recall/F1 as flat keys (stage 1: the malignant class, as the seed reports)."""
    row = metrics["per_class"][name]
    return {f"{prefix}_{k}": row[k] if metrics["n"] else None for k in ("precision", "recall", "f1")}


# --- reporting rules and intervals ---------------------------------------------------------
def check_test_split(y_true, class_names: Sequence[str], groups=None, *, min_cases: int = 10,
                     what: str = "test split") -> None:
    """Refuse (one line, :class:`TestSplitError`) a split that lacks a class or holds fewer than
    ``min_cases`` cases (patients when ``groups`` are given): its metrics would mislead."""
    from optima_common.errors import TestSplitError

    y = np.asarray(y_true).astype(int).ravel()
    missing = [c for k, c in enumerate(class_names) if not (y == k).any()]
    units = len(set(groups)) if groups is not None else len(y)
    unit = "patients" if groups is not None else "cases"
    if missing:
        raise TestSplitError(f"{what} lacks class(es) {', '.join(missing)} ({len(y)} cases, {units} {unit}): "
                             "metrics refused", hint="more data, or pool the test sets")
    if units < min_cases:
        raise TestSplitError(f"{what} is too small to report: {units} {unit}, need {min_cases}")


def _auroc_fast(pos: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties (equals scikit-learn's roc_auc_score)."""
    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def headline(y: np.ndarray, p: np.ndarray, n_classes: int, positive: int | None = None) -> dict[str, float]:
    """Accuracy, macro P/R/F1 over all classes, AUROC (binary: of class 1; else macro of the
    defined one-vs-rest), and ``positive``'s own P/R/F1 — fast, for the bootstrap."""
    pred = p.argmax(1)
    cm = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        rec = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    if n_classes == 2:
        auroc = _auroc_fast(y == 1, p[:, 1])
    else:
        aucs = [_auroc_fast(y == k, p[:, k]) for k in range(n_classes)]
        aucs = [a for a in aucs if not np.isnan(a)]
        auroc = float(np.mean(aucs)) if aucs else float("nan")
    out = {"accuracy": float(tp.sum() / len(y)), "precision": float(prec.mean()), "recall": float(rec.mean()),
           "f1": float(f1.mean()), "auroc": auroc}
    if positive is not None:
        out.update({"positive_precision": float(prec[positive]), "positive_recall": float(rec[positive]),
                    "positive_f1": float(f1[positive])})
    return out


def bootstrap_ci(y_true, probs, groups, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 positive: int | None = None) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of the headline metrics, resampling PATIENTS (``groups``)
    with replacement, so the views and slides of one patient move together. Replicates where a
    metric is undefined (e.g. one class only) are left out of that metric's interval."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(probs, dtype=float)
    g = np.asarray(groups)
    if len(y) == 0:
        return {}
    units, inverse = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inverse == u) for u in range(len(units))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        pick = rng.integers(0, len(units), len(units))
        idx = np.concatenate([members[u] for u in pick])
        for k, v in headline(y[idx], p[idx], p.shape[1], positive).items():
            if not np.isnan(v):
                draws.setdefault(k, []).append(v)
    a = (1 - level) / 2
    return {k: [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))] for k, v in draws.items()}
