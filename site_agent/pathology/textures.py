"""Procedural H&E textures, one per tissue class, as stain concentrations (hematoxylin, eosin).

Each generator returns two float32 maps (H, E) for an ``s`` x ``s`` square; a slide writer
turns them into RGB with the site's stain vectors (Beer-Lambert: I = 255 exp(-OD)). The
classes differ the way a pathologist would look at them (nuclear size, density, shape,
cytoplasm, fibres, lumina, fat vacuoles) and overlap on purpose: Complex mixes tumour, stroma
and immune cells; Necrosis is eosin with nuclear debris; densities and sizes jitter per tile.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import cKDTree


def _noise(rng, s: int, scale: float, sigma: float) -> np.ndarray:
    n = rng.normal(0, 1, (s, s)).astype(np.float32)
    out = ndimage.gaussian_filter(n, sigma) if sigma > 0 else n
    return scale * out / (out.std() + 1e-6)


def _ellipses(s: int, cx, cy, a, b, theta, fill) -> np.ndarray:
    """Filled rotated ellipses (polygons of 12 points) with per-ellipse intensity in [0, 1]."""
    img = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(img)
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    for x, y, aa, bb, th, f in zip(cx, cy, a, b, theta, fill):
        px = x + aa * np.cos(t) * np.cos(th) - bb * np.sin(t) * np.sin(th)
        py = y + aa * np.cos(t) * np.sin(th) + bb * np.sin(t) * np.cos(th)
        draw.polygon(list(zip(px.tolist(), py.tolist())), fill=int(255 * f))
    return np.asarray(img, dtype=np.float32) / 255.0


def _nuclei(rng, s, n, rmin, rmax, *, elong=(1.0, 1.3), theta=None, dark=(0.8, 1.0), blur=0.8):
    n = max(0, int(n))
    r = rng.uniform(rmin, rmax, n)
    e = rng.uniform(*elong, n)
    th = rng.uniform(0, np.pi, n) if theta is None else theta + rng.normal(0, 0.15, n)
    m = _ellipses(s, rng.uniform(0, s, n), rng.uniform(0, s, n), r * e, r / e, th, rng.uniform(*dark, n))
    return ndimage.gaussian_filter(m, blur)


def background(rng, s, k):
    return 0.02 + np.abs(_noise(rng, s, 0.01, 2)), 0.03 + np.abs(_noise(rng, s, 0.015, 4))


def stroma(rng, s, k, *, light: float = 1.0):
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(2.5, 4.5) + _noise(rng, s, 1.5, 6))
    e = light * (0.55 + 0.2 * wave + _noise(rng, s, 0.06, 1.5))
    h = 1.2 * _nuclei(rng, s, k * rng.uniform(15, 30), 2.5, 3.5, elong=(2.2, 3.0), theta=angle)
    return 0.05 + h, np.clip(e, 0.15, None)


def tumor(rng, s, k, *, density: float = 1.0):
    h = _nuclei(rng, s, density * k * rng.uniform(70, 100), 5.5, 9.0, elong=(1.0, 1.5), dark=(0.6, 1.0), blur=1.0)
    h = h * (1.5 + _noise(rng, s, 0.25, 1.0))
    e = 0.35 + _noise(rng, s, 0.07, 3)
    return 0.08 + np.clip(h, 0, None), np.clip(e, 0.1, None)


def immune(rng, s, k):
    h = 2.0 * _nuclei(rng, s, k * rng.uniform(260, 360), 2.8, 4.2, elong=(1.0, 1.1), dark=(0.85, 1.0), blur=0.6)
    return 0.06 + h, 0.18 + np.abs(_noise(rng, s, 0.05, 2))


def adipose(rng, s, k):
    spacing = rng.uniform(38, 55)
    pts = rng.uniform(-spacing, s + spacing, (int((s / spacing + 2) ** 2 * 1.2), 2))
    yy, xx = np.mgrid[0:s, 0:s]
    d, _ = cKDTree(pts).query(np.c_[xx.ravel(), yy.ravel()], k=2)
    membrane = ((d[:, 1] - d[:, 0]) < rng.uniform(1.5, 2.5)).reshape(s, s).astype(np.float32)
    membrane = ndimage.gaussian_filter(membrane, 0.7)
    h = 0.9 * _nuclei(rng, s, k * rng.uniform(1, 4), 2.5, 3.5, elong=(1.8, 2.4)) * (membrane > 0.05)
    return 0.02 + h, 0.04 + 0.8 * membrane


def ducts(rng, s, k):
    h, e = stroma(rng, s, k, light=0.8)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    for _ in range(rng.integers(1, 3)):
        cx, cy = rng.uniform(0.25 * s, 0.75 * s, 2)
        lumen = rng.uniform(0.08, 0.16) * s
        width = rng.uniform(10, 16)
        d = np.hypot(xx - cx, yy - cy)
        ring = (d >= lumen) & (d < lumen + width)
        h[d < lumen + width] = 0.03
        e[d < lumen] = 0.03
        e[ring] = 0.45
        n = int(2 * np.pi * (lumen + width / 2) / 7.5)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 1)
        rr = lumen + width * 0.55
        nuc = _ellipses(s, cx + rr * np.cos(t), cy + rr * np.sin(t), np.full(n, 4.2), np.full(n, 2.6), t,
                        np.full(n, 0.9))
        h = np.maximum(h, 1.4 * nuc)
    return h, e


def necrosis(rng, s, k):
    e = 0.38 + _noise(rng, s, 0.12, 10) + _noise(rng, s, 0.04, 1)
    h = 1.0 * _nuclei(rng, s, k * rng.uniform(120, 200), 0.8, 2.4, elong=(1.0, 2.0), dark=(0.3, 1.0), blur=1.2)
    h += np.clip(_noise(rng, s, 0.08, 8), 0, None)
    return 0.05 + h, np.clip(e, 0.1, None)


def complex_(rng, s, k):
    h, e = stroma(rng, s, k, light=0.9)
    th, te = tumor(rng, s, k, density=0.45)
    ih, _ = immune(rng, s, k * 0.3)
    return np.maximum.reduce([h, th, ih]), np.maximum(e, 0.8 * te)


TEXTURES = {"Tumor": tumor, "Stroma": stroma, "Normal ducts": ducts, "Immune cells": immune, "Adipose": adipose,
            "Necrosis": necrosis, "Complex": complex_, "Background": background}

H_VECTOR = np.array([0.65, 0.70, 0.29])  # Ruifrok & Johnston H&E optical densities (RGB)
E_VECTOR = np.array([0.07, 0.99, 0.11])


def stain_to_rgb(h: np.ndarray, e: np.ndarray, h_vec: np.ndarray, e_vec: np.ndarray) -> np.ndarray:
    od = h[..., None] * h_vec[None, None, :] + e[..., None] * e_vec[None, None, :]
    return np.clip(255.0 * np.exp(-od), 0, 255).astype(np.uint8)
