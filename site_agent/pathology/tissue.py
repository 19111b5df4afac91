"""Tissue detection on a slide thumbnail: Otsu on saturation and darkness, then clean-up.

H&E tissue is coloured (saturated) and darker than the glass; fat is white vacuoles inside
thin stained membranes, so a neighbourhood counts as tissue when enough of it is stained; pen
marks and dust are small, so components below ``min_area`` (fraction of the thumbnail) are
dropped and holes closed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximises the between-class variance of a 1-D sample)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def tissue_mask(rgb: np.ndarray, *, min_area: float = 0.001) -> np.ndarray:
    """Boolean mask (H, W) of tissue in an RGB thumbnail."""
    img = np.asarray(rgb, dtype=np.float32)[..., :3] / 255.0
    mx, mn = img.max(axis=-1), img.min(axis=-1)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    darkness = 1.0 - img.mean(axis=-1)
    score = ndimage.uniform_filter(saturation + darkness, size=3)
    if float(score.max() - score.min()) < 0.05:  # uniform image: all glass or all tissue
        return np.full(score.shape, float(score.mean()) > 0.25)
    glass = float(np.percentile(score, 2))
    fine = score > max(min(otsu_threshold(score), glass + 0.06), 0.06)
    # fat is mostly empty vacuoles between thin membranes: count a neighbourhood as tissue when
    # enough of it is stained (the window scales with the thumbnail, ~1/40 of its side)
    window = max(3, int(max(score.shape) / 40) | 1)
    mask = ndimage.uniform_filter(fine.astype(np.float32), size=window) > 0.08
    mask = ndimage.binary_closing(mask, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= min_area * mask.size
        mask = keep[labels]
    return mask
