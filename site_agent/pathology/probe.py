"""Linear probe: a linear classifier (multinomial logistic regression) on the frozen features of
a pluggable encoder loaded from a local file — a TorchScript module mapping images (B, 3, H, W)
in [0, 1] to features (B, D), or a state dict for one of our backbones (``probe_backbone``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from optima_common.errors import ConfigError
from site_agent.pathology import CLASSES


def load_encoder(path: Path, backbone: str) -> nn.Module:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"probe encoder file not found: {path}")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit.load's deprecation notice
            return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        pass  # not TorchScript: a state dict for one of our backbones
    from site_agent.training.models import build_classifier, embedding_model

    return embedding_model(build_classifier(backbone, len(CLASSES), weights=path))


def features(encoder: nn.Module, ds, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features (N, D) and labels of a dataset, batched, no gradients."""
    from site_agent.training.loop import _loader, resolve_device

    device = resolve_device(cfg.device)
    encoder = encoder.to(device).eval()
    feats, labels = [], []
    with torch.no_grad():
        for x, y in _loader(ds, cfg, shuffle=False, device=device):
            feats.append(encoder(x.to(device)).float().flatten(1).cpu().numpy())
            labels.append(np.asarray(y))
    return np.concatenate(feats), np.concatenate(labels).astype(int)


def linear_probe(encoder: nn.Module, train_ds, test_ds, cfg, *, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metrics on the test set, test labels, test probabilities)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from site_agent.training.metrics import classification_metrics

    xtr, ytr = features(encoder, train_ds, cfg)
    xte, yte = features(encoder, test_ds, cfg)
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(max_iter=2000, C=0.5, random_state=seed).fit(scaler.transform(xtr), ytr)
    probs = np.zeros((len(yte), len(CLASSES)))
    probs[:, clf.classes_] = clf.predict_proba(scaler.transform(xte))
    return classification_metrics(yte, probs, list(CLASSES)), yte, probs
