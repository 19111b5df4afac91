"""Batched whole-slide inference: every tissue patch of a slide classified, then the class map
drawn over the slide thumbnail and the class proportions tabulated (site-internal outputs)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from optima_common.fileio import write_atomic
from site_agent.pathology import CLASSES
from site_agent.pathology.annotations import COLOURS
from site_agent.pathology.slides import Slide
from site_agent.pathology.tiling import (
    PatchDataset,
    TilingParams,
    resolve_params,
    tile_slide,
)


def classify_slide(model, slide_path: Path, params: TilingParams, cfg, *, input_size: int,
                   mask: tuple[np.ndarray, float] | None = None):
    """(patches, predicted class per patch, probabilities) over the slide's tissue."""
    from site_agent.training.loop import predict

    with Slide(slide_path) as slide:
        patches = tile_slide(slide, [], params, mask=mask, labelled_only=False)
    if not patches:
        return patches, np.zeros(0, int), np.zeros((0, len(CLASSES)))
    ds = PatchDataset([slide_path], patches, params, input_size=input_size, cache=False)
    pred = predict(model, ds, cfg)
    return patches, pred.probs.argmax(1), pred.probs


def save_overlay(slide_path: Path, patches, classes: np.ndarray, params: TilingParams, path: Path,
                 *, max_side: int = 1024, alpha: int = 110) -> Path:
    with Slide(slide_path) as slide:
        thumb, scale = slide.thumbnail(max_side)
        params = resolve_params(params, slide)
    base = Image.fromarray(thumb).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    extent = params.size * params.downsample
    for p, k in zip(patches, classes):
        x0, y0 = p.x / scale, p.y / scale
        draw.rectangle([x0, y0, x0 + extent / scale - 1, y0 + extent / scale - 1], fill=(*COLOURS[CLASSES[k]], alpha))
    out = Image.alpha_composite(base, layer)
    legend = ImageDraw.Draw(out)
    for i, name in enumerate(CLASSES):
        legend.rectangle([4, 4 + 14 * i, 14, 14 + 14 * i], fill=(*COLOURS[name], 255), outline=(0, 0, 0, 255))
        legend.text((18, 3 + 14 * i), name, fill=(0, 0, 0, 255))
    buf = io.BytesIO()
    out.convert("RGB").save(buf, format="PNG")
    return write_atomic(path, buf.getvalue())


def write_proportions(rows: list[dict], path: Path) -> Path:
    buf = io.StringIO()
    fields = ["slide_id", "patient_id", "split", "tissue_patches"] + [f"prop_{c.lower().replace(' ', '_')}"
                                                                      for c in CLASSES]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, buf.getvalue().encode())


def proportion_row(record, split: str, classes: np.ndarray) -> dict:
    counts = np.bincount(classes, minlength=len(CLASSES)) if len(classes) else np.zeros(len(CLASSES), int)
    total = max(int(counts.sum()), 1)
    row = {"slide_id": record.slide_id, "patient_id": record.patient_id, "split": split,
           "tissue_patches": int(counts.sum())}
    row.update({f"prop_{c.lower().replace(' ', '_')}": round(counts[k] / total, 4) for k, c in enumerate(CLASSES)})
    return row
