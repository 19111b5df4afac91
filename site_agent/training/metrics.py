"""Classification metrics of a site's model (aggregates only: nothing per image leaves here).

``classification_metrics(y_true, probs, class_names)`` gives ``accuracy`` and macro
``precision``, ``recall``, ``f1``, ``auroc``, plus ``per_class`` and ``confusion_matrix``.

Conventions (documented because sites often lack some classes in a test split):
- macro averages run over the classes PRESENT in ``y_true`` (support > 0); a class the site
  never saw does not drag the mean to zero;
- a per-class precision/recall/F1 with nothing to divide by is 0 (scikit-learn's
  ``zero_division=0``);
- a per-class AUROC is ``None`` (null in JSON) when the class is absent from ``y_true`` or is
  the only class present (one-vs-rest ROC undefined); the macro AUROC is the mean of the
  defined ones, ``None`` when none is;
- two classes: ``auroc`` is the ordinary binary AUROC of the second class's probability.
"""

from __future__ import annotations

import numpy as np
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
    present = [k for k in labels if support[k] > 0]
    macro = lambda values: float(np.mean([values[k] for k in present])) if present else None
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


def summary_metrics(metrics: dict) -> dict[str, float]:
    """The scalar headline numbers (for Flower MetricRecords: no None, no nesting)."""
    return {k: float(metrics[k]) for k in ("accuracy", "precision", "recall", "f1", "auroc")
            if metrics.get(k) is not None}
