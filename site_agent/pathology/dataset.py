"""A site's pathology data folder -> patient-level split patch datasets."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from optima_common.errors import PathologyDataError
from site_agent.pathology.annotations import load_geojson
from site_agent.pathology.slides import Slide
from site_agent.pathology.splits import SlideRecord, patient_splits, read_slide_table
from site_agent.pathology.tiling import Patch, PatchDataset, TilingParams, tile_slide
from site_agent.pathology.tissue import tissue_mask


@dataclass
class SiteData:
    records: list[SlideRecord]
    split_of_patient: dict[str, str]
    datasets: dict[str, PatchDataset]  # train / val / test
    masks: dict[int, tuple[np.ndarray, float]] = field(default_factory=dict)  # slide index -> (mask, downsample)

    def slides_in(self, split: str) -> list[int]:
        return [i for i, r in enumerate(self.records) if self.split_of_patient[r.patient_id] == split]

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: dict(Counter(int(p.label) for p in ds.patches)) for s, ds in self.datasets.items()}


def load_site(data_dir: Path, params: TilingParams, *, input_size: int, seed: int = 0,
              train_stride: int | None = None) -> SiteData:
    """Tile every annotated slide; ``train_stride`` (patch pixels) overlaps training patches.

    Patients are split stratified over the classes of their labelled patches, so a class
    carried by two or more patients reaches the test split (see :func:`patient_splits`)."""
    records = read_slide_table(data_dir)
    paths = [r.slide for r in records]
    tiled: dict[int, list[Patch]] = {}
    masks = {}
    for i, rec in enumerate(records):
        with Slide(rec.slide) as slide:
            thumb, scale = slide.thumbnail()
            masks[i] = (tissue_mask(thumb), scale)
            if rec.annotations is not None:
                tiled[i] = tile_slide(slide, load_geojson(rec.annotations), params, slide_index=i, mask=masks[i])
    labels: dict[str, set[int]] = {}
    for i, rec in enumerate(records):
        labels.setdefault(rec.patient_id, set()).update(p.label for p in tiled.get(i, []) if p.label >= 0)
    splits = patient_splits([r.patient_id for r in records], seed=seed, labels=labels)
    patches: dict[str, list[Patch]] = {"train": [], "val": [], "test": []}
    for i, rec in enumerate(records):
        split = splits[rec.patient_id]
        if split == "heldout" or i not in tiled:
            continue
        if split == "train" and train_stride:
            with Slide(rec.slide) as slide:
                p = TilingParams(size=params.size, downsample=params.downsample, stride=train_stride,
                                 min_overlap=params.min_overlap, min_tissue=params.min_tissue, mpp=params.mpp)
                patches[split] += tile_slide(slide, load_geojson(rec.annotations), p, slide_index=i, mask=masks[i])
        else:
            patches[split] += tiled[i]
    if not patches["train"]:
        raise PathologyDataError(f"no labelled patches in the training slides of {data_dir}",
                                 hint="check that the GeoJSON annotations overlap tissue")
    datasets = {s: PatchDataset(paths, ps, params, input_size=input_size) for s, ps in patches.items()}
    return SiteData(records, splits, datasets, masks)
