"""Training, testing and explaining the two classification stages on ROI crops.

Stage 2 is trained and tested on malignant breasts only (their subtype is known), as in
the seed study. Plots: confusion matrices of both stages, the stage-1 ROC, t-SNE of each
stage's ROI embeddings, and Grad-CAM overlays mapped back onto whole mammograms.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from site_agent.imaging.classify import (
    STAGE1_CLASSES,
    STAGE2_CLASSES,
    Roi,
    RoiDataset,
    TwoStage,
)

CLASSES = {1: STAGE1_CLASSES, 2: STAGE2_CLASSES}


@dataclass
class StageResult:
    metrics: dict
    labels: np.ndarray
    probs: np.ndarray
    embeddings: np.ndarray | None
    rois: list[Roi]


def _stage(model: TwoStage, stage: int):
    return model.stage1 if stage == 1 else model.stage2


def train_stages(site, cfg, models_dir: Path, *, epochs: int | None = None, model: TwoStage | None = None,
                 global_model: TwoStage | None = None) -> tuple[TwoStage, dict]:
    """Fit stage 1 (all ROIs) and stage 2 (malignant ROIs) on train, early-stopped on val.

    A stage without training examples (e.g. a site with no malignant case) keeps its weights.
    """
    from site_agent.training.loop import fit

    model = model or TwoStage(cfg.backbone, getattr(cfg, "weights", None))
    tcfg = cfg.train_config(epochs)  # FedProx's mu, when used, comes with it
    fits = {}
    models_dir.mkdir(parents=True, exist_ok=True)
    for stage in (1, 2):
        train = RoiDataset(site.rois("train"), stage, cfg.roi_size, train=True, seed=cfg.seed)
        val = RoiDataset(site.rois("val"), stage, cfg.roi_size)
        if len(train) == 0:
            continue
        glob = _stage(global_model, stage) if global_model is not None else None
        fits[stage] = fit(_stage(model, stage), train, val, tcfg, models_dir / f"stage{stage}.pt",
                          global_params=glob)
    return model, fits


def evaluate_stage(model: TwoStage, rois: list[Roi], stage: int, cfg, *, embeddings: bool = False) -> StageResult:
    from site_agent.training.loop import predict

    ds = RoiDataset(rois, stage, cfg.roi_size)
    n = len(CLASSES[stage])
    if len(ds) == 0:  # e.g. no malignant test case at a small site: metrics undefined, not an error
        return StageResult(_no_metrics(CLASSES[stage]), np.zeros(0, int), np.zeros((0, n)), None, [])
    pred = predict(_stage(model, stage), ds, cfg.train_config(), embeddings=embeddings)
    metrics = stage_metrics(pred.labels, pred.probs, [r.patient_id for r in ds.rois], stage,
                            n_boot=getattr(cfg, "bootstrap", 0), seed=cfg.seed,
                            min_cases=getattr(cfg, "min_test_patients", 1))
    return StageResult(metrics, pred.labels, pred.probs, pred.embeddings, ds.rois)


def stage_metrics(labels, probs, patients, stage: int, *, n_boot: int = 1000, seed: int = 0,
                  min_cases: int = 1) -> dict:
    """A stage's metrics: macro over all classes with per-class rows; stage 1 also the malignant
    class's own precision/recall/F1 (as the seed reports); ``ci95``: patient-level bootstrap
    intervals of every headline figure; ``reportable`` False with ``refusal`` when the split
    lacks a class or has too few patients (stage 2 often does at one site)."""
    from optima_common.errors import TestSplitError
    from site_agent.training.metrics import (
        bootstrap_ci,
        check_test_split,
        classification_metrics,
        positive_class_metrics,
    )

    names = CLASSES[stage]
    m = classification_metrics(labels, probs, names)
    positive = names.index("Malignant") if stage == 1 else None
    if stage == 1:
        m.update(positive_class_metrics(m, "Malignant", "malignant"))
    if n_boot:
        ci = bootstrap_ci(labels, probs, patients, n_boot=n_boot, seed=seed, positive=positive)
        m["ci95"] = {(k.replace("positive", "malignant")): v for k, v in ci.items()}
        m["ci95_method"] = f"percentile bootstrap over patients, {n_boot} replicates"
    try:
        check_test_split(labels, names, patients, min_cases=min_cases, what=f"stage {stage} test split")
        m["reportable"] = True
    except TestSplitError as exc:
        m["reportable"], m["refusal"] = False, str(exc)
    return m


def _no_metrics(class_names) -> dict:
    n = len(class_names)
    return {"n": 0, "accuracy": None, "precision": None, "recall": None, "f1": None, "auroc": None,
            "per_class": {c: {"precision": None, "recall": None, "f1": None, "auroc": None, "support": 0}
                          for c in class_names},
            "confusion_matrix": [[0] * n for _ in range(n)], "class_names": list(class_names)}


def evaluate_stages(model: TwoStage, rois: list[Roi], cfg) -> dict[int, StageResult]:
    return {s: evaluate_stage(model, rois, s, cfg, embeddings=True) for s in (1, 2)}


def _tsne(result: StageResult, stage: int, path: Path, seed: int) -> None:
    from site_agent.training.plots import _plt, _save, plot_tsne

    if result.embeddings is not None and len(result.labels) >= 5:
        plot_tsne(result.embeddings, result.labels, CLASSES[stage], path, seed=seed)
        return
    plt = _plt()  # too few ROIs for a t-SNE: say so in the figure rather than leave it out
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.text(0.5, 0.5, f"t-SNE needs 5 or more test ROIs\n(got {len(result.labels)})", ha="center", va="center")
    ax.axis("off")
    _save(fig, path)


def gradcam_on_mammogram(model: TwoStage, roi: Roi, stage: int, cfg) -> tuple[np.ndarray, np.ndarray, int]:
    """(whole image 0..1, heatmap 0..1 on the ROI's crop window at whole-image size, predicted class)."""
    from site_agent.imaging.preprocess import crop_roi
    from site_agent.training.explain import gradcam
    from site_agent.training.loop import resolve_device

    net = _stage(model, stage)
    device = resolve_device(cfg.device)
    net.to(device)
    img = roi.image.astype(np.float32) / 255.0
    crop = crop_roi(img, roi.box, cfg.roi_size, context=roi.context)
    x = torch.from_numpy(crop[None, None]).to(device)
    with torch.no_grad():
        pred = int(net.eval()(x).argmax(1).item())
    heat = gradcam(net, x, [pred])[0]  # its layer: fine enough for this input size (MIN_CAM_CELLS)
    return img, heat_on_image(heat, roi.box, roi.context, img.shape), pred


def heat_on_image(heat: np.ndarray, box, context: float, shape: tuple[int, int]) -> np.ndarray:
    """A ROI crop's heatmap put back on the whole image: resized to the crop window that
    :func:`~site_agent.imaging.preprocess.crop_roi` cut for ``box`` and ``context``, NaN outside
    the window (and the window's part beyond the image dropped)."""
    a, b, s = _crop_window(box, context)
    big = cv2.resize(heat.astype(np.float32), (s, s), interpolation=cv2.INTER_LINEAR)
    full = np.full(shape, np.nan, np.float32)  # NaN outside the crop window: nothing drawn there
    h, w = shape
    sx0, sy0, sx1, sy1 = max(a, 0), max(b, 0), min(a + s, w), min(b + s, h)
    if sx1 > sx0 and sy1 > sy0:
        full[sy0:sy1, sx0:sx1] = big[sy0 - b: sy1 - b, sx0 - a: sx1 - a]
    return full


def pointing_game(model: TwoStage, rois: list[Roi], true_boxes: list[tuple], cfg, stage: int = 1) -> dict:
    """Grad-CAM's pointing game: the share of images whose heat maximum (for the predicted class,
    mapped back onto the whole mammogram) falls inside the true lesion box; ``chance`` is the
    share a heat maximum placed uniformly at random in the classified window would reach;
    ``cam_layer`` the block the maps come from and its map side at the ROI size;
    ``by_predicted`` the same per predicted class (a benign call's evidence need not be the lesion)."""
    from site_agent.training.models import gradcam_target

    rows = []  # (hit, chance, predicted class)
    for roi, (x0, y0, x1, y1) in zip(rois, true_boxes):
        _, heat, pred = gradcam_on_mammogram(model, roi, stage, cfg)
        if not np.isfinite(heat).any():
            continue
        y, x = np.unravel_index(np.nanargmax(heat), heat.shape)
        window = np.isfinite(heat)
        inside = window[int(max(y0, 0)):int(y1) + 1, int(max(x0, 0)):int(x1) + 1].sum()
        rows.append((x0 <= x <= x1 and y0 <= y <= y1, float(inside / window.sum()), pred))

    def summary(part):
        return {"pointing_game": float(np.mean([r[0] for r in part])) if part else None, "n": len(part),
                "chance": float(np.mean([r[1] for r in part])) if part else None}

    name, _, side = gradcam_target(_stage(model, stage), cfg.roi_size)
    return {**summary(rows), "cam_layer": f"{name} ({side}x{side})",
            "by_predicted": {c: summary([r for r in rows if r[2] == k]) for k, c in enumerate(CLASSES[stage])}}


def _crop_window(box, context: float = 1.6, min_side: float = 24.0) -> tuple[int, int, int]:
    """Top-left corner and side of the square that :func:`crop_roi` cuts (same geometry)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0, min_side) * context
    return int(round((x0 + x1) / 2 - side / 2)), int(round((y0 + y1) / 2 - side / 2)), max(1, int(round(side)))


def save_mammogram_overlay(img: np.ndarray, heat: np.ndarray, box, path: Path, title: str) -> Path:
    """The whole mammogram in grey, the ROI's Grad-CAM in colour on its crop window, the ROI framed."""
    from site_agent.training.plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4.5))
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    ax.imshow(np.ma.masked_invalid(heat), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    x0, y0, x1, y1 = box
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", lw=1))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return _save(fig, path)


def write_outputs(model: TwoStage, site, det_boxes: dict, results: dict[int, StageResult], cfg, out: Path) -> list[Path]:
    from site_agent.training.plots import plot_confusion_matrix, plot_roc

    written = []
    for stage in (1, 2):
        r = results[stage]
        written.append(plot_confusion_matrix(r.metrics["confusion_matrix"], CLASSES[stage],
                                             out / f"confusion_matrix_stage{stage}.png",
                                             title=f"Stage {stage}: {'benign vs malignant' if stage == 1 else 'subtype'}"))
        _tsne(r, stage, out / f"tsne_stage{stage}.png", cfg.seed)
        written.append(out / f"tsne_stage{stage}.png")
    with warnings.catch_warnings():  # a test split with one class has no ROC curve to label
        warnings.simplefilter("ignore", UserWarning)
        written.append(plot_roc(results[1].labels, results[1].probs, STAGE1_CLASSES, out / "roc_stage1.png"))
    for k, roi in enumerate(results[1].rois[: cfg.gradcam_images]):
        img, heat, pred = gradcam_on_mammogram(model, roi, 1, cfg)
        where = "whole image" if roi.context == 1.0 else "detected ROI"
        title = f"true {STAGE1_CLASSES[roi.stage1]}, predicted {STAGE1_CLASSES[pred]} ({where})"
        written.append(save_mammogram_overlay(img, heat, roi.box, out / f"gradcam_{k + 1}.png", title))
    return written
