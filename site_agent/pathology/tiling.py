"""Patches of a slide on a grid, labelled by annotation overlap, and a torch Dataset of them.

A patch is ``size`` x ``size`` pixels at ``downsample`` (level-0 pixels per patch pixel), so it
covers ``size*downsample`` level-0 pixels. Its label is the annotation class covering the
largest fraction of it when that fraction is at least ``min_overlap``, else it is unlabelled.
Tissue fraction comes from the thumbnail tissue mask; training keeps labelled patches with
enough tissue (Background patches need none), whole-slide inference keeps tissue patches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from shapely.geometry import box
from shapely.strtree import STRtree

from optima_common.errors import PathologyDataError
from site_agent.pathology import CLASSES
from site_agent.pathology.annotations import Annotation
from site_agent.pathology.slides import Slide
from site_agent.pathology.tissue import tissue_mask


@dataclass(frozen=True)
class Patch:
    slide: int  # index into the dataset's slide list
    x: int  # level-0 top-left
    y: int
    label: int  # -1: unlabelled
    overlap: float  # fraction of the patch covered by its label's annotations
    tissue: float  # fraction of tissue in the patch


@dataclass(frozen=True)
class TilingParams:
    size: int = 256
    downsample: float = 1.0
    stride: int | None = None  # in patch pixels; default: size (no overlap)
    min_overlap: float = 0.5
    min_tissue: float = 0.5
    mpp: float | None = None  # microns per patch pixel: when set, each slide's downsample follows from its mpp


def resolve_params(params: TilingParams, slide: Slide) -> TilingParams:
    """``params`` for one slide: with ``params.mpp`` set, the downsample that gives patches of that
    physical resolution on this slide (a 40x scan at 0.25 um/px gets twice a 20x scan's)."""
    if params.mpp is None:
        return params
    mpp = slide.mpp
    if mpp is None:
        raise PathologyDataError(f"slide {slide.path} records no microns per pixel (tiffslide.mpp-x/openslide.mpp-x)",
                                 hint="re-export it with its resolution, or tile by --downsample instead of --mpp")
    down = params.mpp / mpp
    if down < 1.0 - 1e-6:
        raise PathologyDataError(f"slide {slide.path} is scanned at {mpp:g} um/px, coarser than the asked "
                                 f"{params.mpp:g} um/px", hint="ask for a coarser --mpp")
    return replace(params, downsample=max(1.0, down), mpp=None)


def class_overlaps(bounds: tuple[float, float, float, float], annotations: list[Annotation],
                   tree: STRtree | None = None, classes=CLASSES) -> np.ndarray:
    """Fraction of the box covered by each class's annotations (overlapping polygons of one
    class are unioned first, so nothing is counted twice)."""
    b = box(*bounds)
    out = np.zeros(len(classes))
    hits = tree.query(b) if tree is not None else range(len(annotations))
    per_class: dict[str, list] = {}
    for i in hits:
        a = annotations[int(i)]
        if a.label in classes:
            per_class.setdefault(a.label, []).append(a.geometry.intersection(b))
    for label, parts in per_class.items():
        from shapely import union_all

        out[classes.index(label)] = union_all(parts).area / b.area
    return out


def tile_slide(slide: Slide, annotations: list[Annotation], params: TilingParams, *, slide_index: int = 0,
               mask: tuple[np.ndarray, float] | None = None, labelled_only: bool = True) -> list[Patch]:
    """Grid patches of one slide (``mask``: a precomputed (tissue mask, its downsample))."""
    params = resolve_params(params, slide)
    if mask is None:
        thumb, scale = slide.thumbnail()
        mask = (tissue_mask(thumb), scale)
    tmask, scale = mask
    extent = round(params.size * params.downsample)
    step = round((params.stride or params.size) * params.downsample)
    w, h = slide.dimensions
    tree = STRtree([a.geometry for a in annotations]) if annotations else None
    bg = CLASSES.index("Background")
    patches = []
    for y in range(0, h - extent + 1, step):
        for x in range(0, w - extent + 1, step):
            y0, y1 = int(y / scale), max(int(y / scale) + 1, int((y + extent) / scale))
            x0, x1 = int(x / scale), max(int(x / scale) + 1, int((x + extent) / scale))
            tissue = float(tmask[y0:y1, x0:x1].mean()) if tmask[y0:y1, x0:x1].size else 0.0
            label, overlap = -1, 0.0
            if annotations:
                cover = class_overlaps((x, y, x + extent, y + extent), annotations, tree)
                k = int(cover.argmax())
                if cover[k] >= params.min_overlap:
                    label, overlap = k, float(cover[k])
            if labelled_only:
                if label < 0 or (label != bg and tissue < params.min_tissue):
                    continue
            elif tissue < params.min_tissue:
                continue
            patches.append(Patch(slide_index, x, y, label, overlap, tissue))
    return patches


class PatchDataset:
    """torch Dataset of patches: ``(float tensor 3 x input_size x input_size in [0, 1], label)``.

    ``cache`` keeps the decoded, resized patches in memory (uint8) after the first read; by
    default only while that stays under ~2 GB.
    """

    def __init__(self, slide_paths: list[Path], patches: list[Patch], params: TilingParams, *,
                 input_size: int = 128, cache: bool | None = None):
        if cache is None:
            cache = len(patches) * input_size * input_size * 3 < 2 * 1024**3
        self.slide_paths = [Path(p) for p in slide_paths]
        self.patches = list(patches)
        self.params = params
        self.input_size = input_size
        self._slides: dict[int, Slide] = {}
        self._pid = os.getpid()
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.patches)

    def image(self, i: int) -> np.ndarray:
        """The patch as uint8 HxWx3 at the model's input size."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        p = self.patches[i]
        if self._pid != os.getpid():  # a forked DataLoader worker: never share the parent's file handles
            self._slides, self._pid = {}, os.getpid()
        if p.slide not in self._slides:
            self._slides[p.slide] = Slide(self.slide_paths[p.slide])
        slide = self._slides[p.slide]
        img = slide.read(p.x, p.y, self.params.size, resolve_params(self.params, slide).downsample)
        if img.shape[0] != self.input_size:
            from PIL import Image

            img = np.asarray(Image.fromarray(img).resize((self.input_size, self.input_size), Image.BILINEAR))
        if self._cache is not None:
            self._cache[i] = img
        return img

    def __getitem__(self, i: int):
        import torch

        img = self.image(i)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255.0), int(self.patches[i].label)

    def labels(self) -> np.ndarray:
        return np.array([p.label for p in self.patches], dtype=int)

    def __getstate__(self):  # DataLoader workers open their own slide handles
        state = self.__dict__.copy()
        state["_slides"] = {}
        return state
