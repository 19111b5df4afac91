"""Federated vs site-local mammography models on synthetic three-site data (prints figures).

Each site (its own scanner and case mix: non-IID) gets a synthetic CMMD-layout archive. Per
site: YOLO detection trained locally (mAP50 / mAP50-95 on its test split) and its detected
ROIs on its test images. Classification: one site-local two-stage model per site, and one
federated model (FedAvg over Flower messages through the shared core's handlers, in
process) with the same number of local epochs in all. All models are scored on the POOLED
held-out test set (every site's test images, ROIs from that site's own detector); the
acceptance figure is federated vs the mean of the site-local models.

    .venv/bin/python benchmarks/federated_vs_local_mammography.py --out /tmp/mammo-bench
    .venv/bin/python benchmarks/federated_vs_local_mammography.py --patients 12 --rounds 2 --det-epochs 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SITES = ("site_a", "site_b", "site_c")
KEYS = ("accuracy", "precision", "recall", "f1", "auroc")


def _pick(m: dict) -> dict:
    return {k: (None if m.get(k) is None else round(float(m[k]), 4)) for k in KEYS}


def _fmt(v) -> str:
    return "  n/a" if v is None else f"{v:5.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="work folder (default: a temp dir)")
    ap.add_argument("--patients", type=int, default=50, help="patients per site")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--local-epochs", type=int, default=2, help="epochs per federated round at each site")
    ap.add_argument("--local-only-epochs", type=int, help="epochs of the site-local models (default rounds x local)")
    ap.add_argument("--det-epochs", type=int, default=25)
    ap.add_argument("--det-imgsz", type=int, default=256)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--roi-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from flwr.clientapp import ClientApp

    from coordinator.flower.inprocess import InProcessGrid
    from coordinator.flower.training import load_checkpoint, run_federated_training
    from site_agent.imaging.pipeline import MammoConfig, load_site, run_detection
    from site_agent.imaging.stages import evaluate_stage, train_stages
    from site_agent.imaging.synth import synth_site
    from site_agent.imaging.task import global_model
    from site_agent.training.federated import handle_evaluate, handle_train
    from site_agent.training.loop import seed_everything

    root = Path(args.out or tempfile.mkdtemp(prefix="mammo-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    local_epochs = args.local_only_epochs or args.rounds * args.local_epochs
    cfg = MammoConfig.for_device(args.device, backbone=args.backbone, roi_size=args.roi_size,
                                 det_epochs=args.det_epochs, det_imgsz=args.det_imgsz, cls_epochs=local_epochs, seed=args.seed)
    t_all = time.perf_counter()
    report: dict = {"config": {**vars(args), "local_only_epochs": local_epochs}, "sites": {}}
    sites, pooled, pooled_gt = {}, [], []
    for k, name in enumerate(SITES):
        data = root / "data" / name
        if not (data / "clinical.csv").is_file():
            synth_site(data, name, seed=100 + k, patients=args.patients)
        site = load_site(data, cfg)
        t0 = time.perf_counter()
        cache = root / "work" / name / "detection.json"  # detection is site-local: reuse it across reruns
        if cache.is_file():
            saved = json.loads(cache.read_text())
            det, boxes = saved["metrics"], {int(i): tuple(b) for i, b in saved["boxes"].items()}
        else:
            trained = root / "models" / name / "detector.pt"
            det, boxes = run_detection(site, cfg, root / "work" / name, root / "models" / name,
                                       weights=trained if trained.is_file() else None)
            cache.write_text(json.dumps({"metrics": det, "boxes": {str(i): b for i, b in boxes.items()}}))
        test_rois = site.rois("test", boxes)
        sites[name] = (data, site, test_rois)
        pooled += test_rois
        pooled_gt += site.rois("test")  # ground-truth boxes: the classifiers alone
        report["sites"][name] = {"images": len(site.images), "test_images": len(test_rois),
                                 "detection": {k2: round(float(v), 4) for k2, v in det.items()},
                                 "detection_seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name}: {len(site.images)} images, detection mAP50 {det['map50']:.3f} mAP50-95 "
              f"{det['map50_95']:.3f}, ROI hit rate {det['roi_hit_rate']:.2f} ({time.perf_counter() - t0:.0f}s)",
              flush=True)

    def score(model, rois):
        return {f"stage{s}": _pick(evaluate_stage(model, rois, s, cfg).metrics) for s in (1, 2)}

    # --- site-local models ----------------------------------------------------------------
    local_scores, local_gt = {}, {}
    for name, (_, site, test_rois) in sites.items():
        t0 = time.perf_counter()
        seed_everything(args.seed)
        model, _ = train_stages(site, cfg, root / "models" / name)
        local_scores[name] = score(model, pooled)
        local_gt[name] = score(model, pooled_gt)
        report["sites"][name]["local_model_own_test"] = score(model, test_rois)
        report["sites"][name]["local_model_pooled_test"] = local_scores[name]
        print(f"{name} local model ({time.perf_counter() - t0:.0f}s): pooled stage-1 accuracy "
              f"{_fmt(local_scores[name]['stage1']['accuracy'])}, own-site stage-1 accuracy "
              f"{_fmt(report['sites'][name]['local_model_own_test']['stage1']['accuracy'])}", flush=True)

    # --- federated model ------------------------------------------------------------------
    t0 = time.perf_counter()
    app = ClientApp()
    app.train()(handle_train)
    app.evaluate()(handle_evaluate)
    grid = InProcessGrid(app, {i + 1: {"image-root-mammography": str(d)} for i, (d, _, _) in
                               enumerate(sites.values())})
    run_config = {"epochs": args.local_epochs, "backbone": cfg.backbone, "roi_size": cfg.roi_size,
                  "device": cfg.device, "lr": cfg.lr, "optimizer": cfg.optimizer, "batch_size": cfg.batch_size,
                  "seed": args.seed}
    summary = run_federated_training(grid, "mammography", rounds=args.rounds, run_config=run_config,
                                     out_dir=root / "federated", min_replies=len(SITES), round_timeout=3600)
    fed = global_model(load_checkpoint(root / "federated" / summary.final_checkpoint), run_config)
    fed_scores = score(fed, pooled)
    fed_gt = score(fed, pooled_gt)
    report["federated"] = {"pooled_test": fed_scores, "pooled_test_gt_rois": fed_gt, "seconds": round(time.perf_counter() - t0, 1),
                           "per_site_test": {n: score(fed, rois) for n, (_, _, rois) in sites.items()},
                           "rounds": [r.eval_metrics for r in summary.rounds]}
    print(f"federated: {args.rounds} rounds x {args.local_epochs} local epochs ({time.perf_counter() - t0:.0f}s)")

    # --- comparison ---------------------------------------------------------------------------
    def mean_of(scores):
        return {st: {k: (float(np.mean(vals)) if (vals := [scores[n][st][k] for n in SITES
                                                           if scores[n][st][k] is not None]) else None)
                     for k in KEYS} for st in ("stage1", "stage2")}

    mean_local, mean_local_gt = mean_of(local_scores), mean_of(local_gt)
    report["mean_local_pooled_test"] = mean_local
    report["mean_local_pooled_test_gt_rois"] = mean_local_gt
    report["local_pooled_test_gt_rois"] = local_gt
    report["pooled_test_images"] = len(pooled)
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    print(f"\npooled held-out test: {len(pooled)} images ({sum(r.stage2 is not None for r in pooled)} malignant)")
    for title, loc, mean, fedsc in (("ROIs from each site's detector (whole pipeline)", local_scores, mean_local,
                                     fed_scores),
                                    ("ground-truth ROIs (classifiers alone)", local_gt, mean_local_gt, fed_gt)):
        print(f"\n{title}\n{'model':<22}{'stage':<8}" + "".join(f"{k:>10}" for k in KEYS))
        rows = [(f"local {n}", loc[n]) for n in SITES] + [("mean of locals", mean), ("federated", fedsc)]
        for label, sc in rows:
            for st in ("stage1", "stage2"):
                print(f"{label:<22}{st:<8}" + "".join(f"{_fmt(sc[st][k]):>10}" for k in KEYS))
        for st in ("stage1", "stage2"):
            for k in ("accuracy", "auroc"):
                f, m = fedsc[st][k], mean[st][k]
                verdict = "federated better" if f is not None and m is not None and f > m else "federated NOT better"
                print(f"{st} {k}: federated {_fmt(f)} vs mean local {_fmt(m)} -> {verdict}")
    (root / "benchmark.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {root / 'benchmark.json'} ({report['seconds']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
