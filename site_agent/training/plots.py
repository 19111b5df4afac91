"""Figures of a site's evaluation, written as PNG (matplotlib Agg, atomic writes)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from optima_common.fileio import write_atomic


def _plt():
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "optima-mpl"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return write_atomic(path, buf.getvalue())


def plot_confusion_matrix(cm, class_names, path: Path, *, title: str = "Confusion matrix") -> Path:
    plt = _plt()
    cm = np.asarray(cm)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    rows = cm.sum(axis=1, keepdims=True)
    ax.imshow(np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rows[i, 0] and cm[i, j] / rows[i, 0] > 0.6 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def _one_vs_rest(y, probs, class_names, curve):
    for k, name in enumerate(class_names):
        pos = (np.asarray(y) == k).astype(int)
        if 0 < pos.sum() < len(pos):
            yield name, curve(pos, np.asarray(probs)[:, k])


def plot_roc(y, probs, class_names, path: Path) -> Path:
    from sklearn.metrics import auc, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (fpr, tpr, _) in _one_vs_rest(y, probs, class_names, roc_curve):
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.2f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, one class vs rest")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_pr(y, probs, class_names, path: Path) -> Path:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (prec, rec, _) in _one_vs_rest(y, probs, class_names, precision_recall_curve):
        k = list(class_names).index(name)
        ap = average_precision_score((np.asarray(y) == k).astype(int), np.asarray(probs)[:, k])
        ax.plot(rec, prec, label=f"{name} (AP {ap:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall, one class vs rest")
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def tsne_coordinates(embeddings: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) after PCA to 50 dimensions when the features are wider."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float32)
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def plot_tsne(embeddings, y, class_names, path: Path, *, seed: int = 0) -> Path:
    plt = _plt()
    xy = tsne_coordinates(embeddings, seed=seed)
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(class_names):
        sel = np.asarray(y) == k
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=cmap(k % 10), label=name)
    ax.set_title("t-SNE of patch embeddings")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2)
    return _save(fig, path)
