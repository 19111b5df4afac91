"""Drawing synthetic mammograms: breast outline, tissue texture, masses, calcifications.

Everything is in "density" units (0 = air, ~0.3 fat, ~0.6 glandular tissue, ~0.9 dense
lesion, 1+ calcium); the site's scanner model (:mod:`site_agent.imaging.synth`) turns
density into detector values. Lesion appearance follows the usual radiology patterns:
benign masses are round and circumscribed, malignant ones irregular and spiculated;
benign calcifications are few and coarse, malignant ones many, fine and clustered. The
molecular subtype changes size, margin and associated calcifications (Luminal A: small,
spiculated; Luminal B: larger, irregular; HER2-enriched: lobulated with fine linear
branching calcifications; triple negative: large, round, with a low-density core).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class LesionSpec:
    malignant: bool
    subtype: str | None
    abnormality: str  # calcification | mass | both


def breast_mask(h: int, w: int, view: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Soft breast mask (chest wall on the left) and the pectoral muscle mask for MLO."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = w * rng.uniform(0.62, 0.85)
    half = h * rng.uniform(0.36, 0.46)
    cy = h * (0.5 if view == "CC" else rng.uniform(0.42, 0.5))
    r = np.sqrt((xx / depth) ** 2 + ((yy - cy) / half) ** 2)
    mask = np.clip((1.0 - r) * 25.0, 0.0, 1.0)
    if view == "MLO":  # MLO: widen toward the axilla and add the pectoral muscle triangle
        top = np.clip((1.0 - np.sqrt((xx / depth) ** 2 + (np.minimum(yy - cy, 0) / (h * 0.6)) ** 2)) * 25, 0, 1)
        mask = np.maximum(mask, top * (yy < cy))
        px, py = w * rng.uniform(0.25, 0.4), h * rng.uniform(0.45, 0.7)
        muscle = np.clip((1.0 - xx / px - yy / py) * 20.0, 0.0, 1.0) * mask
    else:
        muscle = np.zeros_like(mask)
    return mask, muscle


def tissue(h: int, w: int, mask: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """Fat background with fibroglandular texture at two scales, fading toward the skin."""
    coarse = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), sigma=max(h, w) / 40)
    fine = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), sigma=1.5)
    coarse /= coarse.std() + 1e-6
    fine /= fine.std() + 1e-6
    gland = 1.0 / (1.0 + np.exp(-(coarse * 1.6 + (density - 0.5) * 4.0)))
    inner = ndimage.gaussian_filter(mask, sigma=max(h, w) / 25)
    return mask * (0.28 + 0.3 * gland * inner + 0.03 * fine)


def _disk(yy, xx, cy, cx, radius, soft=1.5):
    return np.clip((radius - np.hypot(yy - cy, xx - cx)) / soft + 0.5, 0.0, 1.0)


def _mass(yy, xx, cy, cx, spec: LesionSpec, rng) -> tuple[np.ndarray, float]:
    """Density added by a mass and its radius (pixels)."""
    st = spec.subtype
    if not spec.malignant:
        radius, lobes, spicules, contrast = rng.uniform(5, 9), 0.04, 0, 0.22
    elif st == "Luminal A":
        radius, lobes, spicules, contrast = rng.uniform(5, 7.5), 0.18, int(rng.integers(10, 16)), 0.32
    elif st == "Luminal B":
        radius, lobes, spicules, contrast = rng.uniform(8, 11), 0.28, int(rng.integers(5, 9)), 0.34
    elif st == "HER2-enriched":
        radius, lobes, spicules, contrast = rng.uniform(7, 10), 0.35, 2, 0.3
    else:  # triple negative
        radius, lobes, spicules, contrast = rng.uniform(10, 14), 0.06, 0, 0.4
    ang = np.arctan2(yy - cy, xx - cx)
    phase = rng.uniform(0, 2 * np.pi, 3)
    wobble = 1 + lobes * (np.sin(3 * ang + phase[0]) + 0.7 * np.sin(5 * ang + phase[1]) + 0.4 * np.sin(7 * ang + phase[2])) / 2.1
    dist = np.hypot(yy - cy, xx - cx)
    body = np.clip((radius * wobble - dist) / (0.8 if spec.malignant else 1.8) + 0.5, 0.0, 1.0)
    body = body * (0.75 + 0.25 * np.clip(1 - dist / (radius + 1e-6), 0, 1))
    if st == "triple negative":  # low-density (necrotic) core
        body = body - 0.45 * _disk(yy, xx, cy, cx, radius * 0.45, soft=2.0)
    out = contrast * body
    for a in rng.uniform(0, 2 * np.pi, spicules):  # thin radiating lines
        length = radius * rng.uniform(1.2, 2.2)
        t = np.linspace(radius * 0.6, radius + length, int(3 * length))
        ly, lx = cy + t * np.sin(a), cx + t * np.cos(a)
        ok = (ly >= 0) & (ly < yy.shape[0]) & (lx >= 0) & (lx < yy.shape[1])
        line = np.zeros(yy.shape, np.float32)
        line[ly[ok].astype(int), lx[ok].astype(int)] = 1.0
        out += contrast * 0.8 * ndimage.gaussian_filter(line, 0.6) * 2.0
    return out, radius


def _calcs(h, w, cy, cx, spec: LesionSpec, rng) -> tuple[np.ndarray, float]:
    """Point-like bright specks; returns the density and the cluster radius."""
    out = np.zeros((h, w), np.float32)
    if not spec.malignant:  # few coarse, scattered
        n, spread, size, branching = int(rng.integers(3, 6)), rng.uniform(8, 12), (1.6, 2.6), False
    elif spec.subtype == "HER2-enriched":
        n, spread, size, branching = int(rng.integers(18, 30)), rng.uniform(5, 8), (0.6, 1.0), True
    else:
        n, spread, size, branching = int(rng.integers(10, 20)), rng.uniform(4, 7), (0.6, 1.1), False
    pts = rng.normal(0, spread / 2, (n, 2))
    if branching:  # fine linear branching: points along 2-3 short segments
        segs = rng.uniform(0, 2 * np.pi, 3)
        t = rng.uniform(-spread, spread, n)
        k = rng.integers(0, 3, n)
        pts = np.c_[t * np.sin(segs[k]), t * np.cos(segs[k])] + rng.normal(0, 0.6, (n, 2))
    ys, xs = np.round(cy + pts[:, 0]).astype(int), np.round(cx + pts[:, 1]).astype(int)
    ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    for y, x in zip(ys[ok], xs[ok]):
        r = rng.uniform(*size)
        y0, y1, x0, x1 = max(0, y - 4), min(h, y + 5), max(0, x - 4), min(w, x + 5)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], 0.9 * _disk(yy, xx, y, x, r, soft=0.6))
    extent = float(np.abs(pts).max()) + size[1] + 1 if n else 0.0
    return out, extent


def render_lesion(img: np.ndarray, mask: np.ndarray, center: tuple[float, float], spec: LesionSpec,
                  rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Add the lesion at ``center`` (y, x) in place; returns its box (x0, y0, x1, y1) in pixels."""
    h, w = img.shape
    cy, cx = center
    half = 0.0
    if spec.abnormality in ("mass", "both"):
        y0, y1, x0, x1 = max(0, int(cy) - 40), min(h, int(cy) + 41), max(0, int(cx) - 40), min(w, int(cx) + 41)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dens, radius = _mass(yy, xx, cy, cx, spec, rng)
        img[y0:y1, x0:x1] += dens * mask[y0:y1, x0:x1]
        half = radius * (1.15 if spec.malignant else 1.0) + 2
    if spec.abnormality in ("calcification", "both"):
        dens, extent = _calcs(h, w, cy, cx, spec, rng)
        img += dens * mask
        half = max(half, extent + 2)
    return (max(0.0, cx - half), max(0.0, cy - half), min(w - 1.0, cx + half), min(h - 1.0, cy + half))
