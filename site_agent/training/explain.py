"""Grad-CAM heatmaps (a small hook version) and their overlays as PNG.

The hook version gives the same maps as ``pytorch_grad_cam.GradCAM`` (checked in the tests);
keeping our own avoids that library's per-call hook juggling inside training loops. Heatmaps
are site-internal: they are written to the site's output folder and never sent anywhere.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from optima_common.fileio import write_atomic
from site_agent.training.models import gradcam_layer


def gradcam(model: nn.Module, images: torch.Tensor, target_classes=None, *, layer: nn.Module | None = None) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] at the input size; ``target_classes`` default: the predicted.
    ``layer`` default: the deepest block with a map of at least 4x4 cells at this input size."""
    layer = layer or gradcam_layer(model, tuple(images.shape[-2:]))
    acts, grads = {}, {}
    h1 = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: grads.__setitem__("g", go[0]))
    was_training = model.training
    model.eval()
    try:
        x = images.detach().clone().requires_grad_(True)
        logits = model(x)
        if target_classes is None:
            target_classes = logits.argmax(1)
        target = torch.as_tensor(target_classes, device=logits.device).long().view(-1)
        model.zero_grad(set_to_none=True)
        logits.gather(1, target.view(-1, 1)).sum().backward()
        a, g = acts["a"].detach(), grads["g"].detach()
        cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
        cam = nn.functional.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo = cam.amin(dim=(1, 2), keepdim=True)
        hi = cam.amax(dim=(1, 2), keepdim=True)
        cam = (cam - lo) / (hi - lo).clamp_min(1e-7)
    finally:
        h1.remove()
        h2.remove()
        model.train(was_training)
    return cam.cpu().numpy()


def save_gradcam_overlay(image, heatmap: np.ndarray, path: Path, *, alpha: float = 0.45,
                         title: str | None = None) -> Path:
    """``image``: HxW or HxWxC (uint8, or float in [0, 1]); ``heatmap``: HxW in [0, 1]."""
    import os
    import tempfile

    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "optima-mpl"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3] if img.shape[-1] >= 3 else np.repeat(img, 3, axis=-1)
    heat = plt.get_cmap("jet")(np.clip(heatmap, 0, 1))[..., :3]
    blend = (1 - alpha) * img + alpha * heat
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    axes[0].imshow(np.clip(img, 0, 1))
    axes[1].imshow(np.clip(blend, 0, 1))
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return write_atomic(path, buf.getvalue())
