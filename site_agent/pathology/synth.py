"""Synthetic whole-slide images with QuPath GeoJSON annotations, for tests and the demo.

A site folder: ``slides/<id>.tiff`` (pyramidal tiled JPEG TIFF, levels 1, 4, 16),
``annotations/<id>.geojson`` (QuPath FeatureCollection), ``slides.csv`` (slide_id, patient_id,
slide, annotations; paths relative to the folder) and ``synth_truth.json`` (the site profile
the generator used). Sites differ on purpose (non-IID): each site's class mix comes from a
Dirichlet draw (some classes rare or absent) and its stain vectors and intensities shift.
Slides differ too, as real scans do: every slide gets its own stain vectors and strengths
around the site's (staining batch), brightness, gamma and blur (scanner focus), and each
region's texture is blended with another class's by up to 35% (tissue classes overlap), so a
classifier cannot separate the classes by colour or one clean texture alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel
from shapely.geometry import MultiPoint, Polygon, box
from shapely.ops import voronoi_diagram

from optima_common.errors import PathologyDataError
from optima_common.fileio import write_atomic
from site_agent.pathology import CLASSES
from site_agent.pathology.annotations import Annotation, write_geojson
from site_agent.pathology.textures import E_VECTOR, H_VECTOR, TEXTURES, stain_to_rgb

TISSUE_CLASSES = [c for c in CLASSES if c != "Background"]
TILE = 256
MARGIN = 16


class SiteProfile(BaseModel):
    site: str
    seed: int
    class_prior: dict[str, float]
    h_vector: list[float]
    e_vector: list[float]
    h_scale: float
    e_scale: float


class SynthResult(BaseModel):
    site: str
    slides: int
    patients: int
    profile: SiteProfile
    seconds: float


def site_profile(site: str, seed: int) -> SiteProfile:
    rng = np.random.default_rng([seed, zlib.crc32(site.encode())])
    prior = rng.dirichlet(np.full(len(TISSUE_CLASSES), 0.7))
    prior = 0.97 * prior + 0.03 / len(TISSUE_CLASSES)
    h = H_VECTOR + rng.normal(0, 0.08, 3)
    e = E_VECTOR + rng.normal(0, 0.08, 3)
    return SiteProfile(site=site, seed=seed, class_prior=dict(zip(TISSUE_CLASSES, prior.round(4).tolist())),
                       h_vector=(np.abs(h) / np.linalg.norm(h)).round(4).tolist(),
                       e_vector=(np.abs(e) / np.linalg.norm(e)).round(4).tolist(),
                       h_scale=round(float(rng.uniform(0.75, 1.25)), 3), e_scale=round(float(rng.uniform(0.7, 1.3)), 3))


def _tissue_outline(rng, w: int, h: int) -> Polygon:
    t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    r = 1 + sum(rng.normal(0, 0.06) * np.cos(k * t + rng.uniform(0, 6.3)) for k in range(2, 6))
    cx, cy = w / 2 + rng.normal(0, 0.03 * w), h / 2 + rng.normal(0, 0.03 * h)
    poly = Polygon(np.c_[cx + 0.40 * w * r * np.cos(t), cy + 0.40 * h * r * np.sin(t)])
    return poly.buffer(0).intersection(box(0, 0, w, h))


def slide_layout(rng, profile: SiteProfile, w: int, h: int) -> list[Annotation]:
    """Tissue split into Voronoi regions, each a class drawn from the site's prior, plus a
    Background annotation on the glass."""
    tissue = _tissue_outline(rng, w, h)
    classes = list(profile.class_prior)
    prior = np.array(list(profile.class_prior.values()))
    n = int(rng.integers(9, 15))
    minx, miny, maxx, maxy = tissue.bounds
    pts = MultiPoint(np.c_[rng.uniform(minx, maxx, n), rng.uniform(miny, maxy, n)])
    cells = [c.intersection(tissue) for c in voronoi_diagram(pts, envelope=box(0, 0, w, h)).geoms]
    out = []
    for cell in cells:
        if cell.is_empty or cell.area < 0.002 * w * h:
            continue
        out.append(Annotation(classes[int(rng.choice(len(classes), p=prior / prior.sum()))], cell.simplify(2)))
    corner = [box(0, 0, 0.25 * w, 0.22 * h), box(0.75 * w, 0.78 * h, w, h)][int(rng.integers(0, 2))]
    glass = corner.difference(tissue.buffer(40))
    if glass.area > 0.01 * w * h:
        out.append(Annotation("Background", glass))
    return out


def slide_variation(rng, profile: SiteProfile) -> tuple[SiteProfile, dict]:
    """One slide's staining batch (stain vectors and strengths around the site's) and scanner
    settings (brightness, gamma, blur)."""
    h = np.array(profile.h_vector) + rng.normal(0, 0.05, 3)
    e = np.array(profile.e_vector) + rng.normal(0, 0.05, 3)
    slide = profile.model_copy(update={
        "h_vector": (np.abs(h) / np.linalg.norm(h)).tolist(), "e_vector": (np.abs(e) / np.linalg.norm(e)).tolist(),
        "h_scale": profile.h_scale * float(rng.uniform(0.8, 1.2)),
        "e_scale": profile.e_scale * float(rng.uniform(0.8, 1.2))})
    scanner = {"brightness": float(rng.uniform(-12, 12)), "gamma": float(rng.uniform(0.85, 1.15)),
               "blur": float(rng.uniform(0.0, 1.2))}
    return slide, scanner


def render_slide(rng, annotations: list[Annotation], profile: SiteProfile, w: int, h: int, *,
                 vary: bool = True) -> np.ndarray:
    """Level-0 RGB (h, w, 3): each 256 tile renders the textures of the classes it touches
    (``vary``: per-slide stain/scanner variation and overlapping class textures)."""
    scanner = None
    if vary:
        profile, scanner = slide_variation(rng, profile)
    label = Image.new("L", (w, h), CLASSES.index("Background") + 1)
    draw = ImageDraw.Draw(label)
    for a in annotations:
        for poly in getattr(a.geometry, "geoms", [a.geometry]):
            if poly.geom_type == "Polygon" and not poly.is_empty:
                draw.polygon([(float(x), float(y)) for x, y in poly.exterior.coords], fill=CLASSES.index(a.label) + 1)
    lab = np.asarray(label) - 1
    hv, ev = np.array(profile.h_vector), np.array(profile.e_vector)
    out = np.empty((h, w, 3), np.uint8)
    s = TILE + 2 * MARGIN
    for ty in range(0, h, TILE):
        for tx in range(0, w, TILE):
            tl = lab[ty:ty + TILE, tx:tx + TILE]
            hh = np.zeros(tl.shape, np.float32)
            ee = np.zeros(tl.shape, np.float32)
            for k in np.unique(tl):
                th, te = TEXTURES[CLASSES[k]](rng, s, (s / TILE) ** 2 * rng.uniform(0.75, 1.25))
                if vary and CLASSES[k] != "Background":  # tissue classes overlap: blend in another's texture
                    other = TISSUE_CLASSES[int(rng.integers(len(TISSUE_CLASSES)))]
                    oh, oe = TEXTURES[other](rng, s, (s / TILE) ** 2)
                    mix = float(rng.uniform(0.0, 0.35))
                    th, te = (1 - mix) * th + mix * oh, (1 - mix) * te + mix * oe
                sel = tl == k
                hh[sel] = th[MARGIN:MARGIN + tl.shape[0], MARGIN:MARGIN + tl.shape[1]][sel]
                ee[sel] = te[MARGIN:MARGIN + tl.shape[0], MARGIN:MARGIN + tl.shape[1]][sel]
            out[ty:ty + TILE, tx:tx + TILE] = stain_to_rgb(hh * profile.h_scale, ee * profile.e_scale, hv, ev)
    if scanner is not None:
        from scipy import ndimage

        img = out.astype(np.float32) / 255.0
        if scanner["blur"] > 0.05:
            img = ndimage.gaussian_filter(img, (scanner["blur"], scanner["blur"], 0))
        img = np.clip(img, 0, 1) ** scanner["gamma"] * 255.0 + scanner["brightness"]
        out = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_pyramid(rgb: np.ndarray, path: Path, *, mpp: float = 0.5) -> Path:
    """Tiled JPEG TIFF with plain levels at downsamples 1, 4, 16 (tiffslide/OpenSlide read it)."""
    import tifffile

    buf = io.BytesIO()
    img = Image.fromarray(rgb)
    res = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(buf) as tw:
        for i, ds in enumerate((1, 4, 16)):
            level = np.asarray(img.resize((max(1, rgb.shape[1] // ds), max(1, rgb.shape[0] // ds)), Image.BOX)) \
                if ds > 1 else rgb
            tw.write(level, tile=(256, 256) if min(level.shape[:2]) >= 256 else (16, 16), photometric="rgb",
                     compression="jpeg", compressionargs={"level": 90}, subfiletype=0 if i == 0 else 1,
                     resolution=(res[0] / ds, res[1] / ds), resolutionunit="CENTIMETER")
    return write_atomic(path, buf.getvalue())


def generate_site(out: Path, site: str, seed: int, *, slides: int = 12, width: int = 2560, height: int = 2048,
                  force: bool = False) -> SynthResult:
    import time

    t0 = time.perf_counter()
    out = Path(out)
    if slides < 1:
        raise PathologyDataError("--slides must be at least 1")
    if width < 512 or height < 512:
        raise PathologyDataError("synthetic slides must be at least 512 x 512 pixels")
    if (out / "slides.csv").exists() and not force:
        raise PathologyDataError(f"{out} already holds a slide table", hint="choose an empty folder")
    profile = site_profile(site, seed)
    rng = np.random.default_rng([seed, zlib.crc32(site.encode()), 1])
    patients = max(1, math.ceil(slides * 0.75))
    rows = []
    for i in range(slides):
        sid = f"{site}-S{i + 1:03d}"
        annotations = slide_layout(rng, profile, width, height)
        write_pyramid(render_slide(rng, annotations, profile, width, height), out / "slides" / f"{sid}.tiff")
        write_geojson(annotations, out / "annotations" / f"{sid}.geojson")
        rows.append({"slide_id": sid, "patient_id": f"{site}-P{i % patients + 1:03d}",
                     "slide": f"slides/{sid}.tiff", "annotations": f"annotations/{sid}.geojson"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    result = SynthResult(site=site, slides=slides, patients=patients, profile=profile,
                         seconds=time.perf_counter() - t0)
    write_atomic(out / "synth_truth.json", json.dumps(result.model_dump(), indent=2).encode())
    write_atomic(out / "slides.csv", buf.getvalue().encode())  # last: its presence marks a complete folder
    return result
