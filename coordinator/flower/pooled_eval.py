"""Pooled evaluation of a federated training round (numpy only): what the coordinator makes of the
sites' evaluate replies. Accuracy and macro precision/recall/F1 from the summed confusion matrices
of the sites that sent them, AUROC from their released score histograms, every other scalar as an
example-weighted mean; withheld groups counted (see :mod:`optima_common.eval_release`)."""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Message

from optima_common.disclosure.model_replies import POLICY_KEYS
from optima_common.eval_release import cm_groups, is_flag

log = logging.getLogger("coordinator.flower.training")


def _weighted_metrics(replies: list[Message]) -> tuple[int, dict[str, float]]:
    total, sums, weights = 0, {}, {}
    for rep in replies:
        m = dict(rep.content.metric_records["metrics"])
        n = int(m.pop("num-examples", 0))
        total += n
        for k, v in m.items():
            if isinstance(v, (int, float)) and k not in POLICY_KEYS:  # a site's policy is not a metric
                sums[k] = sums.get(k, 0.0) + n * float(v)
                weights[k] = weights.get(k, 0) + n
    return total, {k: sums[k] / weights[k] for k in sums if weights[k] > 0}


def metrics_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 over ALL classes from a confusion matrix (rows:
    truth, columns: prediction); a class with nothing to divide by scores 0 (scikit-learn's
    ``zero_division=0``)."""
    cm = np.asarray(cm, dtype=float)
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        rec = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    total = cm.sum()
    return {"accuracy": float(tp.sum() / total) if total else float("nan"), "precision": float(prec.mean()),
            "recall": float(rec.mean()), "f1": float(f1.mean())}


def _pooled_metrics(replies: list[Message]) -> tuple[int, dict[str, float]]:
    """Weighted means of the sites' scalars, except that accuracy/precision/recall/F1 are
    recomputed from the sites' summed confusion matrices where the sites send them (a weighted
    mean of macro metrics is not the macro metric of the pooled test set). A site that withheld
    a group (``{p}cm_withheld``, ``{p}hist_withheld``: a cell under its minimum cell count) is
    left out of that group's pooling; ``{p}cm_withheld_sites`` / ``{p}hist_withheld_sites`` count
    such sites and ``{p}cm_sites`` the sites pooled."""
    total, means = _weighted_metrics(replies)
    summed: dict[str, dict[tuple[int, int], float]] = {}
    for rep in replies:
        for prefix, cells in cm_groups(dict(rep.content.metric_records["metrics"])).items():
            acc = summed.setdefault(prefix, {})
            for cell, v in cells.items():
                acc[cell] = acc.get(cell, 0.0) + v
    from optima_common import score_histogram as H

    site_metrics = [dict(rep.content.metric_records["metrics"]) for rep in replies]
    out = {k: v for k, v in means.items() if not cm_groups({k: v}) and H.TAG not in k and not is_flag(k)}
    for m in site_metrics:  # groups a site withheld (small cells): pooled over the sites that sent
        for k in filter(is_flag, m):
            out[f"{k}_sites"] = out.get(f"{k}_sites", 0.0) + 1.0
            log.warning("a site withheld %s (a cell under its minimum cell count): pooled without it", k)
    out.update(H.pooled_metrics(site_metrics))  # AUROC of the pooled test (and validation) sets
    for prefix, cells in summed.items():
        k = max(max(i, j) for i, j in cells) + 1
        cm = np.zeros((k, k))
        for (i, j), v in cells.items():
            cm[i, j] = v
        for name, value in metrics_from_confusion(cm).items():
            out[f"{prefix}{name}"] = value
        out.update({f"{prefix}cm_{i}_{j}": v for (i, j), v in cells.items()})
        out[f"{prefix}cm_sites"] = float(sum(1 for m in site_metrics if prefix in cm_groups(m)))
    return total, out
