"""``site-agent train mammography``: detection, two-stage classification, explanations, at one site.

Steps: index the archive (unreadable/inconsistent files skipped and counted); patient-level
70/15/15 splits stratified by label; YOLO trained on train (validated on val), mAP on test;
the two stages trained on ground-truth ROI crops of train (early stopping on val loss, best
checkpoint kept) and tested on the detector's ROIs of the test images; then plots and
``metrics.json``. Everything stays in ``--out`` at the site.

Without any lesion box (real CMMD ships none) the site runs whole-image classification: no
detector, both stages on the whole preprocessed mammogram. With boxes, images lacking one are
skipped and counted. Images are streamed: read and preprocessed when used, with a small LRU
cache (:class:`LazyImages`), never all held in memory.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from optima_common.errors import ConfigError
from optima_common.fileio import write_atomic
from site_agent.imaging.classify import Roi, patient_splits
from site_agent.imaging.clinical import MammographyDataError
from site_agent.imaging.dicom_io import Archive, open_archive, read_pixels
from site_agent.imaging.preprocess import Preprocess, preprocess, to_uint8, yolo_to_xyxy

log = logging.getLogger(__name__)


class MammoConfig(BaseModel):
    """Run settings. The field defaults are the seed study's (ResNet-50 from ImageNet weights, SGD
    with momentum, lr 1e-4, batch 32, up to 100 epochs, early stopping, augmentation);
    ``for_device("cuda")`` keeps them with
    224 px ROIs and 640 px detection. ``for_device("cpu")`` sizes a run for 2 CPU cores: 64 px
    ROIs, 256 px detection, ResNet-18 with Adam (lr 1e-3), 20 classification and 25 detection
    epochs, because ResNet-50 with SGD at 1e-4 from random weights neither learns nor finishes
    within minutes there (measured: stage-1 AUROC 0.47 after 10 epochs, ~25 s per epoch)."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["cpu", "cuda"] = "cpu"
    backbone: str = "resnet50"
    weights: str | None = "imagenet"  # the seed's start; "none": random; or a local state-dict file
    roi_size: int = Field(224, ge=16)
    det_imgsz: int = Field(640, ge=32)
    det_epochs: int = Field(100, ge=1)
    det_model: str = "yolov8n.yaml"
    cls_epochs: int = Field(100, ge=1)
    patience: int = Field(10, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    seed: int = 0
    gradcam_images: int = Field(4, ge=0)
    min_test_patients: int = Field(10, ge=1)  # fewer test patients: metrics refused (too small to report)
    bootstrap: int = Field(1000, ge=0)  # patient-level bootstrap replicates for the 95% intervals
    preprocess: Preprocess = Preprocess()

    @classmethod
    def for_device(cls, device: str, epochs: int | None = None, **kw) -> MammoConfig:
        base = dict(device="cuda") if device == "cuda" else dict(
            device="cpu", backbone="resnet18", optimizer="adam", lr=1e-3, roi_size=64, det_imgsz=256,
            det_epochs=25, cls_epochs=20, patience=6, weights=None)
        cfg = cls(**{**base, **kw})
        if epochs is not None:  # --epochs caps detection and both stages
            cfg = cfg.model_copy(update={"det_epochs": min(cfg.det_epochs, epochs),
                                         "cls_epochs": min(cfg.cls_epochs, epochs)})
        return cfg

    def train_config(self, epochs: int | None = None):
        from site_agent.training.loop import TrainConfig

        return TrainConfig(epochs=epochs or self.cls_epochs, batch_size=self.batch_size, lr=self.lr,
                           optimizer=self.optimizer, patience=self.patience, device=self.device, seed=self.seed,
                           precision="bf16" if self.device == "cuda" else "fp32",
                           channels_last=self.device == "cuda")


class LazyImages:
    """Preprocessed uint8 images read from their DICOM files on demand (an LRU cache of
    ``cache`` images): a site's archive is streamed, not loaded."""

    def __init__(self, paths: list[Path], prep: Preprocess, cache: int = 64):
        from collections import OrderedDict

        self.paths, self.prep, self.cache = list(paths), prep, cache
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self.reads = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        if i in self._lru:
            self._lru.move_to_end(i)
            return self._lru[i]
        img = to_uint8(preprocess(read_pixels(self.paths[i]), self.prep))
        self.reads += 1
        self._lru[i] = img
        if len(self._lru) > self.cache:
            self._lru.popitem(last=False)
        return img

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class _ImageRef:
    """One image of a :class:`LazyImages`, read when its pixels are used (what a Roi holds)."""

    __slots__ = ("i", "images")

    def __init__(self, images: LazyImages, i: int):
        self.images, self.i = images, i

    @property
    def shape(self):
        return self.images[self.i].shape

    def astype(self, dtype):
        return self.images[self.i].astype(dtype)

    def __array__(self, dtype=None, copy=None):
        a = self.images[self.i]
        return a if dtype is None else a.astype(dtype)


class SiteImages(BaseModel):
    """A site's images (streamed, see :class:`LazyImages`) with their split and labels."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    keys: list[str]
    images: LazyImages
    boxes: list[tuple | None]  # YOLO rows per image; None: no lesion box (whole-image classification)
    splits: list[str]
    stage1: list[int]
    stage2: list[int | None]
    patients: list[str]
    skipped: list[str]

    def idx(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.splits) if s == split]

    @property
    def whole_image(self) -> bool:
        return all(b is None for b in self.boxes)

    def rois(self, split: str, boxes: dict[int, tuple] | None = None) -> list[Roi]:
        """ROIs of a split: ground-truth boxes, or ``boxes[i]`` (detected) where given, or the
        whole image when the site has no boxes. Pixels are read when a ROI is used."""
        out = []
        for i in self.idx(split):
            ref = _ImageRef(self.images, i)
            if self.boxes[i] is None:
                h, w = ref.shape
                out.append(Roi(ref, (0.0, 0.0, w - 1.0, h - 1.0), self.stage1[i], self.stage2[i], self.patients[i],
                               context=1.0))
                continue
            if boxes is not None:
                box = boxes[i]
            else:
                h, w = ref.shape
                box = yolo_to_xyxy(self.boxes[i][0], h, w)
            out.append(Roi(ref, box, self.stage1[i], self.stage2[i], self.patients[i]))
        return out


def load_site(data: Path, cfg: MammoConfig) -> SiteImages:
    archive: Archive = open_archive(data)
    if any(r.boxes for r in archive.images):  # lesion boxes: detection + ROI classification
        usable = [r for r in archive.images if r.boxes]
        skipped = list(archive.skipped) + [f"{r.rel}: no YOLO label (labels/{r.rel[:-4]}.txt)"
                                           for r in archive.images if not r.boxes]
    else:  # no box anywhere (CMMD as published): whole-image classification
        usable, skipped = list(archive.images), list(archive.skipped)
    split = patient_splits([r.record.patient_id for r in usable], seed=cfg.seed,
                           labels=[int(r.record.malignant) for r in usable])  # stratified by label
    imgs = LazyImages([r.path for r in usable], cfg.preprocess)
    return SiteImages(keys=[r.rel[:-4].replace("/", "__") for r in usable], images=imgs,
                      boxes=[r.boxes or None for r in usable], splits=[split[r.record.patient_id] for r in usable],
                      stage1=[int(r.record.malignant) for r in usable],
                      stage2=[r.record.subtype_index for r in usable],
                      patients=[r.record.patient_id for r in usable], skipped=skipped)


def run_detection(site: SiteImages, cfg: MammoConfig, workdir: Path, models_dir: Path,
                  weights: Path | None = None) -> tuple[dict, dict]:
    """Train YOLO (unless ``weights`` are given), mAP on test, and the best detected box per test
    image (the whole image if none)."""
    from site_agent.imaging.detection import (
        DetItem,
        detect_best,
        evaluate_detector,
        export_dataset,
        train_detector,
    )

    def items(split):  # a generator: each image is read, written for YOLO and dropped
        return (DetItem(site.keys[i], site.images[i].astype(np.float32) / 255.0, site.boxes[i])
                for i in site.idx(split))

    data_yaml = export_dataset({s: items(s) for s in ("train", "val", "test")}, workdir / "yolo")
    if weights is None:
        weights = train_detector(data_yaml, workdir / "runs", epochs=cfg.det_epochs, imgsz=cfg.det_imgsz,
                                 device=cfg.device, seed=cfg.seed, model_yaml=cfg.det_model)
        models_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, models_dir / "detector.pt")
    metrics = evaluate_detector(weights, data_yaml, split="test", imgsz=cfg.det_imgsz, device=cfg.device,
                                workdir=workdir / "runs")
    wanted = site.idx("test")
    found = detect_best(weights, [site.images[i].astype(np.float32) / 255.0 for i in wanted], imgsz=cfg.det_imgsz,
                        device=cfg.device)
    boxes, missed = {}, 0
    for i, hit in zip(wanted, found):
        h, w = site.images[i].shape
        boxes[i] = hit[0] if hit else (0.0, 0.0, w - 1.0, h - 1.0)
        missed += hit is None
    metrics["test_images"] = len(wanted)
    metrics["images_without_detection"] = missed
    metrics["roi_hit_rate"] = _hit_rate(site, boxes)
    return metrics, boxes


def _hit_rate(site: SiteImages, boxes: dict) -> float:
    """Share of test images whose detected ROI centre lies inside the true lesion box."""
    hits = []
    for i, (x0, y0, x1, y1) in boxes.items():
        h, w = site.images[i].shape
        tx0, ty0, tx1, ty1 = yolo_to_xyxy(site.boxes[i][0], h, w)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        hits.append(tx0 <= cx <= tx1 and ty0 <= cy <= ty1)
    return float(np.mean(hits)) if hits else 0.0


def _pointing_game(model, site: SiteImages, det_boxes, cfg: MammoConfig) -> dict | None:
    """Stage 1 Grad-CAM pointing game on the test images against their true lesion boxes (None
    without boxes: CMMD has none to check against)."""
    if site.whole_image:
        return None
    from site_agent.imaging.stages import pointing_game

    idx = site.idx("test")[: max(cfg.gradcam_images, 32)]
    rois = [r for r, i in zip(site.rois("test", det_boxes), site.idx("test")) if i in set(idx)]
    truth = []
    for i in idx:
        h, w = site.images[i].shape
        truth.append(yolo_to_xyxy(site.boxes[i][0], h, w))
    return {**pointing_game(model, rois, truth, cfg), "stage": 1, "boxes": "ground truth"}


def train_mammography(data: str | Path, out: str | Path, cfg: MammoConfig,
                      progress=lambda m: None) -> dict:
    """The whole site pipeline; returns the metrics written to ``out/metrics.json``.

    Everything is written to a staging folder next to ``out`` and moved in at the end, so a
    failed run leaves ``out`` as it was (nothing half-written).
    """
    data, out = Path(data), Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        metrics = _run(data, stage, cfg, progress)
        out.mkdir(exist_ok=True)
        for old in out.glob("gradcam_*.png"):
            old.unlink()
        for item in stage.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return metrics


def _run(data: Path, out: Path, cfg: MammoConfig, progress) -> dict:
    from site_agent.imaging.stages import evaluate_stages, train_stages, write_outputs

    t0 = time.perf_counter()
    site = load_site(data, cfg)
    progress(f"{len(site.images)} images ({len(site.idx('train'))} train, {len(site.idx('val'))} val, "
             f"{len(site.idx('test'))} test); skipped {len(site.skipped)} file(s)"
             + (f", first: {site.skipped[0]}" if site.skipped else ""))
    if not site.idx("test") or not site.idx("val"):
        raise MammographyDataError(f"{data} has too few patients for train/val/test splits (need 3 or more)")
    from site_agent.imaging.classify import STAGE1_CLASSES
    from site_agent.training.metrics import check_test_split

    test = site.idx("test")  # refused before any training: nothing is written
    check_test_split([site.stage1[i] for i in test], STAGE1_CLASSES, [site.patients[i] for i in test],
                     min_cases=cfg.min_test_patients, what=f"the test split of {data}")
    with tempfile.TemporaryDirectory(prefix="work-", dir=out) as tmp:
        if site.whole_image:
            det_metrics = {"map50": None, "map50_95": None, "mode": "whole-image (no lesion boxes)"}
            det_boxes = None
            progress("no lesion boxes: whole-image classification, no detector")
        else:
            det_metrics, det_boxes = run_detection(site, cfg, Path(tmp), out / "models")
            progress(f"detection: mAP50 {det_metrics['map50']:.3f}, mAP50-95 {det_metrics['map50_95']:.3f}")
        model, fits = train_stages(site, cfg, out / "models")
        progress("classification trained (" + ", ".join(f"stage {k}: best epoch {v.best_epoch} of {len(v.history)}"
                                                        for k, v in fits.items()) + ")")
        results = evaluate_stages(model, site.rois("test", det_boxes), cfg)
        explanations = _pointing_game(model, site, det_boxes, cfg)
    metrics = {"detection": det_metrics, "stage1": results[1].metrics, "stage2": results[2].metrics,
               "explanations": explanations,
               "data": {"images": len(site.images), "skipped_files": len(site.skipped),
                        "patients": len(set(site.patients)),
                        "split_images": {s: len(site.idx(s)) for s in ("train", "val", "test")}},
               "training": {f"stage{k}": {"best_epoch": v.best_epoch, "epochs_run": len(v.history)}
                            for k, v in fits.items()},
               "config": json.loads(cfg.model_dump_json()), "seconds": round(time.perf_counter() - t0, 1)}
    write_outputs(model, site, det_boxes, results, cfg, out)
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    return metrics
