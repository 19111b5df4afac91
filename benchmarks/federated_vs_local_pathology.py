"""Federated vs site-local pathology models on a pooled held-out test set (non-IID sites).

    python benchmarks/federated_vs_local_pathology.py --seeds 1 2 3

For each seed: three synthetic sites that differ on purpose (each its own Dirichlet class mix,
so some classes are rare or missing at a site, and its own stain vectors) are written to a temp
folder; each site trains a local model on its own train split (early stopping on its own
validation split); a federated model is trained with FedAvg over the same three sites through
Flower's ClientApp/Message classes (in-process grid, the same handlers a SuperNode runs). All
models are scored on the POOLED test splits of the three sites (patients never seen in
training). Prints accuracy and macro F1 of the federated model and the mean of the local ones.
Defaults: small CPU setting (pretrained EfficientNet-Lite0 at 64 px). ``--tiny`` is the CI size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SITES = ("north", "south", "east")


def _pooled_test(sites, opts):
    from torch.utils.data import ConcatDataset

    from site_agent.pathology.task import site_data

    parts = [site_data(d, opts).datasets["test"] for d in sites]
    return ConcatDataset([p for p in parts if len(p)])


def _score(model, ds, opts) -> dict:
    from site_agent.pathology import CLASSES
    from site_agent.training.loop import predict
    from site_agent.training.metrics import classification_metrics

    pred = predict(model, ds, opts.train_config())
    m = classification_metrics(pred.labels, pred.probs, list(CLASSES))
    return {"accuracy": m["accuracy"], "f1": m["f1"], "n": m["n"]}


def run_seed(seed: int, workdir: Path, *, slides: int, size: tuple[int, int], backbone: str, input_size: int,
             rounds: int, local_epochs: int, batch_size: int, lr: float, n_sites: int = 3,
             max_steps: int | None = None) -> dict:
    from flwr.clientapp import ClientApp

    from coordinator.flower.inprocess import InProcessGrid
    from coordinator.flower.training import load_checkpoint, run_federated_training
    from site_agent.pathology.options import PathologyOptions
    from site_agent.pathology.pipeline import build_model
    from site_agent.pathology.synth import generate_site
    from site_agent.pathology.task import site_data
    from site_agent.training.federated import (
        bn_from_wire,
        handle_evaluate,
        handle_train,
    )
    from site_agent.training.loop import fit

    dirs = []
    for i, name in enumerate(SITES[:n_sites]):
        d = workdir / f"seed{seed}" / name
        if not (d / "slides.csv").exists():
            generate_site(d, name, 100 * seed + i, slides=slides, width=size[0], height=size[1])
        dirs.append(d)
    base = {"backbone": backbone, "input_size": input_size, "batch_size": batch_size, "lr": lr, "device": "cpu",
            "seed": seed, "max_steps_per_epoch": max_steps, "gradcam_samples": 0}
    opts = PathologyOptions(**base, epochs=rounds * local_epochs, patience=3)
    pooled = _pooled_test(dirs, opts)
    t0 = time.perf_counter()
    local = []
    for d in dirs:
        model = build_model(opts)
        fit(model, site_data(d, opts).datasets["train"], site_data(d, opts).datasets["val"], opts.train_config(),
            workdir / f"local-{seed}-{d.name}.pt")
        local.append({"site": d.name, **_score(model, pooled, opts)})
    t_local = time.perf_counter() - t0
    app = ClientApp()
    app.train()(handle_train)
    app.evaluate()(handle_evaluate)
    grid = InProcessGrid(app, {i + 1: {"image-root-pathology": str(d)} for i, d in enumerate(dirs)})
    t0 = time.perf_counter()
    run_config = {**{k: v for k, v in base.items() if v is not None}, "epochs": local_epochs, "patience": 1}
    summary = run_federated_training(grid, "pathology", rounds=rounds, run_config=run_config,
                                     out_dir=workdir / f"fed-{seed}", min_replies=len(dirs), round_timeout=3600)
    import torch

    model = build_model(opts)
    ck = load_checkpoint(workdir / f"fed-{seed}" / summary.final_checkpoint)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in ck.items()})
    bn_from_wire(model)  # checkpoints hold BatchNorm moments (E[x^2]) as they travel
    fed = _score(model, pooled, opts)
    return {"seed": seed, "pooled_test_patches": len(pooled), "local": local,
            "local_mean": {k: float(np.mean([m[k] for m in local])) for k in ("accuracy", "f1")},
            "federated": fed, "seconds_local": round(t_local, 1), "seconds_federated": round(time.perf_counter() - t0, 1),
            "rounds": [r.eval_metrics for r in summary.rounds]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--slides", type=int, default=8, help="slides per site")
    ap.add_argument("--size", type=int, nargs=2, default=[2048, 1536], help="slide width height (level 0)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tiny", action="store_true", help="CI size: 6 small slides per site, tiny CNN, 2 rounds")
    ap.add_argument("--workdir", help="keep the sites and models here (default: a temporary folder)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.tiny:
        args.slides, args.size, args.backbone, args.input_size, args.rounds = 6, [768, 768], "tiny", 32, 2
    with tempfile.TemporaryDirectory(prefix="fed-vs-local-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        results = [run_seed(s, work, slides=args.slides, size=tuple(args.size), backbone=args.backbone,
                            input_size=args.input_size, rounds=args.rounds, local_epochs=args.local_epochs,
                            batch_size=args.batch_size, lr=args.lr) for s in args.seeds]
    print(f"{'seed':>4} {'pooled n':>8} {'local acc':>9} {'local F1':>8} {'fed acc':>8} {'fed F1':>7}")
    for r in results:
        print(f"{r['seed']:>4} {r['pooled_test_patches']:>8} {r['local_mean']['accuracy']:>9.3f} "
              f"{r['local_mean']['f1']:>8.3f} {r['federated']['accuracy']:>8.3f} {r['federated']['f1']:>7.3f}")
    mean = lambda part, k: float(np.mean([r[part][k] for r in results]))
    print(f"mean over {len(results)} seeds: local accuracy {mean('local_mean', 'accuracy'):.3f}, F1 "
          f"{mean('local_mean', 'f1'):.3f}; federated accuracy {mean('federated', 'accuracy'):.3f}, F1 "
          f"{mean('federated', 'f1'):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
