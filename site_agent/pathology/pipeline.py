"""Local training at a site: tiles -> model -> metrics, figures, Grad-CAM, whole-slide maps.

Writes into ``out``: ``model_best.pt``, ``metrics.json``, ``confusion_matrix.png``, ``roc.png``,
``pr.png``, ``tsne.png``, ``gradcam_<n>_<class>.png``, ``slide_proportions.csv``,
``overlay_<slide>.png`` and, with a probe encoder, ``probe_metrics.json``. Everything stays at
the site; only ``metrics.json``'s aggregates are meant to be shared.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from optima_common.fileio import write_atomic
from site_agent.pathology import CLASSES
from site_agent.pathology.dataset import SiteData, load_site
from site_agent.pathology.options import PathologyOptions

log = logging.getLogger(__name__)


def build_model(opts: PathologyOptions):
    from site_agent.training.models import build_classifier

    weights = opts.weights
    if weights is not None and str(weights).lower() in ("imagenet", "none"):
        weights = str(weights).lower()  # a keyword, not a file name
    return build_classifier(opts.backbone, len(CLASSES), weights=weights)


def _gradcams(model, ds, probs, out: Path, n: int) -> list[str]:
    import torch

    from site_agent.training.explain import gradcam, save_gradcam_overlay

    labels = ds.labels()
    picks, seen = [], set()
    for i in np.argsort(-probs.max(1)):  # confident examples, one per class first
        if labels[i] not in seen:
            picks.append(int(i))
            seen.add(labels[i])
        if len(picks) >= n:
            break
    if not picks:
        return []
    model = model.cpu().float()
    x = torch.stack([ds[i][0] for i in picks])
    maps = gradcam(model, x)
    written = []
    for j, (i, heat) in enumerate(zip(picks, maps)):
        true, pred = CLASSES[labels[i]], CLASSES[int(probs[i].argmax())]
        name = f"gradcam_{j + 1}_{true.lower().replace(' ', '_')}.png"
        save_gradcam_overlay(ds.image(i), heat, out / name, title=f"true {true}, predicted {pred}")
        written.append(name)
    return written


def _whole_slides(model, site: SiteData, opts: PathologyOptions, cfg, out: Path) -> list[str]:
    from site_agent.pathology.wsi import (
        classify_slide,
        proportion_row,
        save_overlay,
        write_proportions,
    )

    rows, written = [], []
    params = opts.tiling()
    for i, rec in enumerate(site.records):
        patches, classes, _ = classify_slide(model, rec.slide, params, cfg, input_size=opts.input_size,
                                             mask=site.masks.get(i))
        rows.append(proportion_row(rec, site.split_of_patient[rec.patient_id], classes))
        name = f"overlay_{rec.slide_id}.png"
        save_overlay(rec.slide, patches, classes, params, out / name)
        written.append(name)
    write_proportions(rows, out / "slide_proportions.csv")
    return written


def split_table(site: SiteData) -> dict:
    """Patients, slides and patches per split, and patches per class in each split."""
    out = {}
    for s, ds in site.datasets.items():
        slides = {p.slide for p in ds.patches}
        per_class = dict.fromkeys(CLASSES, 0)
        for p in ds.patches:
            per_class[CLASSES[p.label]] += 1
        out[s] = {"patients": len({site.records[i].patient_id for i in slides}), "slides": len(slides),
                  "patches": len(ds), "per_class": per_class}
    return out


def _intervals(site: SiteData, ds, pred, seed: int, n_boot: int = 1000) -> dict:
    """Patient-level bootstrap 95% CIs (patches of one patient move together) and whether the
    test split can be reported (every class present, 10+ patients)."""
    from optima_common.errors import TestSplitError
    from site_agent.training.metrics import bootstrap_ci, check_test_split

    patients = [site.records[p.slide].patient_id for p in ds.patches]
    out = {"ci95": bootstrap_ci(pred.labels, pred.probs, patients, n_boot=n_boot, seed=seed),
           "ci95_method": f"percentile bootstrap over patients, {n_boot} replicates",
           "test_patients": len(set(patients))}
    try:
        check_test_split(pred.labels, CLASSES, patients, what="pathology test split")
        out["reportable"] = True
    except TestSplitError as exc:
        out["reportable"], out["refusal"] = False, str(exc)
    return out


def run_local_training(data_dir: Path, out: Path, opts: PathologyOptions) -> dict:
    """Train on the site's train split (early stopping on val), evaluate on its test split.

    Everything is written into a staging folder next to ``out`` and moved into ``out`` only
    when the whole run succeeded, so a failed run leaves no half set of outputs."""
    import os
    import shutil
    import tempfile

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        summary = _run(Path(data_dir), stage, opts)
        out.mkdir(exist_ok=True)
        for f in stage.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def _run(data_dir: Path, out: Path, opts: PathologyOptions) -> dict:
    from site_agent.training.loop import fit, predict
    from site_agent.training.metrics import classification_metrics
    from site_agent.training.plots import (
        plot_confusion_matrix,
        plot_pr,
        plot_roc,
        plot_tsne,
    )

    t0 = time.perf_counter()
    site = load_site(data_dir, opts.tiling(), input_size=opts.input_size, seed=opts.seed,
                     train_stride=opts.train_stride)
    eval_split = "test"
    if not len(site.datasets["test"]):  # refused before training; never validation metrics in its place
        from optima_common.errors import TestSplitError

        raise TestSplitError(f"the test split of {data_dir} has no labelled patch: no metrics to report",
                             hint="annotate the test patients' slides or add patients")
    cfg = opts.train_config()
    import torch

    torch.manual_seed(opts.seed)  # the new classification head's initial weights follow the run's seed
    model = build_model(opts)
    log.info("pathology: %s", {s: len(d) for s, d in site.datasets.items()})
    res = fit(model, site.datasets["train"], site.datasets["val"], cfg, out / "model_best.pt")
    ds = site.datasets[eval_split]
    pred = predict(model, ds, cfg, embeddings=opts.tsne_max > 0)
    metrics = classification_metrics(pred.labels, pred.probs, list(CLASSES))
    metrics.update(_intervals(site, ds, pred, opts.seed))
    names = list(CLASSES)
    plot_confusion_matrix(metrics["confusion_matrix"], names, out / "confusion_matrix.png")
    plot_roc(pred.labels, pred.probs, names, out / "roc.png")
    plot_pr(pred.labels, pred.probs, names, out / "pr.png")
    if pred.embeddings is not None and len(pred.labels) >= 5:
        sel = np.random.default_rng(opts.seed).permutation(len(pred.labels))[:opts.tsne_max]
        plot_tsne(pred.embeddings[sel], pred.labels[sel], names, out / "tsne.png", seed=opts.seed)
    gradcams = _gradcams(model, ds, pred.probs, out, opts.gradcam_samples)
    from site_agent.pathology.pointing import tissue_pointing_game

    explanations = tissue_pointing_game(model, site, ds, seed=opts.seed)  # Grad-CAM on annotated regions
    overlays = _whole_slides(model, site, opts, cfg, out)
    probe = None
    if opts.probe_encoder is not None:
        from site_agent.pathology.probe import linear_probe, load_encoder

        probe, _, _ = linear_probe(load_encoder(opts.probe_encoder, opts.probe_backbone), site.datasets["train"],
                                   ds, cfg, seed=opts.seed)
        write_atomic(out / "probe_metrics.json", json.dumps(probe, indent=2).encode())
    summary = {**metrics, "evaluated_on": eval_split, "backbone": opts.backbone,
               "patches": {s: len(d) for s, d in site.datasets.items()},
               "slides": {s: len(site.slides_in(s)) for s in ("train", "val", "test", "heldout")},
               "splits": split_table(site),
               "fit": res.model_dump(), "seconds": round(time.perf_counter() - t0, 1),
               "gradcam_files": gradcams, "overlay_files": overlays, "explanations": explanations,
               "linear_probe": {k: probe[k] for k in ("accuracy", "f1", "auroc")} if probe else None}
    write_atomic(out / "metrics.json", json.dumps(summary, indent=2).encode())
    return summary
