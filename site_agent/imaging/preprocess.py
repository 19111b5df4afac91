"""Preprocessing: intensity normalization, Gaussian denoising, resizing, ROI crops.

Scanners differ in bit depth, gain and gamma, so each image is first normalized on its
own: percentiles of the breast (pixels above the background) map to 0..1. Denoising is
a small Gaussian filter. Resizing uses area interpolation (OpenCV, as ultralytics).
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import BaseModel, Field
from scipy import ndimage


class Preprocess(BaseModel):
    low_pct: float = Field(1.0, ge=0, lt=50)
    high_pct: float = Field(99.5, gt=50, le=100)
    denoise_sigma: float = Field(0.7, ge=0)


def normalize(img: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.5) -> np.ndarray:
    """Map the breast's ``low_pct``..``high_pct`` percentiles to 0..1 (background stays ~0)."""
    img = img.astype(np.float32)
    lo_all, hi_all = float(img.min()), float(img.max())
    if hi_all <= lo_all:
        return np.zeros_like(img)
    fg = img[img > lo_all + 0.05 * (hi_all - lo_all)]
    if fg.size < 16:
        fg = img.ravel()
    lo, hi = np.percentile(fg, [low_pct, high_pct])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * (img > lo_all + 0.05 * (hi_all - lo_all))


def denoise(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, sigma) if sigma > 0 else img


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    interp = cv2.INTER_AREA if height <= img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img.astype(np.float32), (width, height), interpolation=interp)


def preprocess(img: np.ndarray, cfg: Preprocess | None = None) -> np.ndarray:
    """Normalized and denoised float32 image in 0..1, same size as the input."""
    cfg = cfg or Preprocess()
    return np.clip(denoise(normalize(img, cfg.low_pct, cfg.high_pct), cfg.denoise_sigma), 0.0, 1.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def yolo_to_xyxy(row, h: int, w: int) -> tuple[float, float, float, float]:
    _, cx, cy, bw, bh = row
    return ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)


def crop_roi(img: np.ndarray, box: tuple[float, float, float, float], size: int, *, context: float = 1.6,
             min_side: float = 24.0) -> np.ndarray:
    """Square crop around ``box`` (x0, y0, x1, y1) with ``context`` times its side, resized to ``size``.

    Pixels outside the image are zero (air), so a box at the edge keeps its geometry.
    """
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0, min_side) * context
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a, b = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(1, int(round(side)))
    out = np.zeros((s, s), np.float32)
    h, w = img.shape
    sx0, sy0, sx1, sy1 = max(a, 0), max(b, 0), min(a + s, w), min(b + s, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - b: sy1 - b, sx0 - a: sx1 - a] = img[sy0:sy1, sx0:sx1]
    return resize(out, size, size)
