"""The pathology headline figures: accuracy and macro AUROC with slide/patient-level bootstrap
95% CIs and the Grad-CAM pointing game on annotated tissue regions, from one synthetic site.

    python benchmarks/pathology_headline.py --work /tmp/path-headline [--slides 100] [--seed 1] \
        [--width 1024 --height 768] [--patch-size 128] [--input-size 80] [--epochs 10] [--max-steps 25] \
        [--threads 1]
    python benchmarks/pathology_headline.py --work DIR --checkpoint FILE   # evaluate a saved model_best.pt

Synthetic slides (``site-agent images synth pathology``: per-slide stain, brightness, gamma and
focus variation, overlapping class textures; 100 slides of 75 patients by default, so that the
stratified patient split gives 11 test patients holding all 8 classes), EfficientNet-Lite0 with
its packaged ImageNet weights on 128 px patches resized to 80 px, at most 25 steps of 32 patches
per epoch, early stopping on validation loss (patience 3, at most 10 epochs), one torch thread:
sized to end within ~15 minutes on a fraction of a shared 2-core machine. The defaults are the
settings of the figure in README and docs/imaging.md.
Prints one JSON document with the figures, wall and CPU seconds (user + sys of this process and
its children).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def options(args):
    from site_agent.pathology.options import PathologyOptions

    return PathologyOptions(device="cpu", seed=args.train_seed, patch_size=args.patch_size,
                            input_size=args.input_size, epochs=args.epochs, patience=args.patience,
                            max_steps_per_epoch=args.max_steps)


def evaluate_checkpoint(data: Path, checkpoint: Path, opts) -> dict:
    """Test-split metrics with patient-level bootstrap CIs and the pointing game of a saved
    ``model_best.pt`` (a finished run's, or the best epoch so far of a run stopped early)."""
    import torch

    from site_agent.pathology import CLASSES
    from site_agent.pathology.dataset import load_site
    from site_agent.pathology.pipeline import _intervals, build_model, split_table
    from site_agent.pathology.pointing import tissue_pointing_game
    from site_agent.training.loop import predict
    from site_agent.training.metrics import classification_metrics

    site = load_site(data, opts.tiling(), input_size=opts.input_size, seed=opts.seed, train_stride=opts.train_stride)
    model = build_model(opts)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    ds = site.datasets["test"]
    pred = predict(model, ds, opts.train_config())
    m = classification_metrics(pred.labels, pred.probs, list(CLASSES))
    m.update(_intervals(site, ds, pred, opts.seed))
    m["explanations"] = tissue_pointing_game(model, site, ds, seed=opts.seed)
    out = {k: m.get(k) for k in ("n", "accuracy", "auroc", "f1", "ci95", "ci95_method", "test_patients",
                                 "reportable", "refusal", "explanations")}
    return {**out, "splits": split_table(site)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--slides", type=int, default=100)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--patch-size", type=int, default=128)
    ap.add_argument("--input-size", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=25, help="cap on training steps per epoch")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 wastes least on a shared machine)")
    ap.add_argument("--seed", type=int, default=1, help="synthetic site seed")
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--checkpoint", type=Path, help="evaluate this saved model_best.pt instead of training")
    args = ap.parse_args(argv)
    os.environ.setdefault("MPLCONFIGDIR", str(args.work / "mpl"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data, run = args.work / "site", args.work / "run"
    t0, c0 = time.perf_counter(), cpu_seconds()
    if args.checkpoint:
        print(json.dumps({**evaluate_checkpoint(data, args.checkpoint, options(args)),
                          "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_seconds() - c0, 1)},
                         indent=2))
        return 0
    from site_agent.pathology.pipeline import run_local_training
    from site_agent.pathology.synth import generate_site

    if not (data / "slides.csv").is_file():
        generate_site(data, "north", args.seed, slides=args.slides, width=args.width, height=args.height)
        print(f"synthetic site written: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    synth_cpu, synth_wall = cpu_seconds() - c0, time.perf_counter() - t0
    opts = options(args)
    m = run_local_training(data, run, opts)
    keep = {k: m.get(k) for k in ("n", "accuracy", "auroc", "f1", "ci95", "ci95_method", "test_patients",
                                  "reportable", "refusal", "explanations", "patches", "slides", "fit", "splits")}
    print(json.dumps({**keep, "options": opts.model_dump(mode="json"),
                      "synth_cpu_s": round(synth_cpu, 1), "synth_wall_s": round(synth_wall, 1),
                      "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_seconds() - c0, 1)},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
