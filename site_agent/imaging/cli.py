"""``site-agent images synth mammography`` and ``site-agent train mammography``.

Importing this module imports neither torch nor ultralytics (the analytics CLI stays light);
the commands import them when they run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from optima_common.errors import ConfigError


def add_parsers(synth_subparsers, train_subparsers) -> None:
    p = synth_subparsers.add_parser("mammography", help="synthetic CMMD-layout DICOM mammograms with YOLO boxes")
    p.add_argument("--out", required=True, help="new (or empty) folder for the site's archive")
    p.add_argument("--site", default="site_a", help="site name: fixes its scanner and case mix")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--patients", type=int, default=80, help="patients (1-2 breasts each, CC and MLO views)")
    p.set_defaults(func=cmd_synth)

    p = train_subparsers.add_parser("mammography", help="YOLO lesion detection + two-stage ResNet-50 on a site's "
                                                        "DICOM mammograms; writes metrics.json and plots")
    p.add_argument("--data", required=True, help="site folder: clinical.csv, dicom/, labels/")
    p.add_argument("--out", required=True, help="folder for metrics.json, plots and models")
    p.add_argument("--epochs", type=int, help="cap on the epochs of detection and of both stages")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when torch sees a GPU, else cpu")
    p.add_argument("--backbone", help="resnet50 (default on a GPU), resnet18 (default on CPU), efficientnet_lite0, tiny")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4 with SGD on a GPU, 1e-3 with Adam on CPU)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help="default sgd on a GPU, adam on CPU")
    p.add_argument("--roi-size", type=int, help="ROI crop side in pixels (default 64 on CPU, 224 on a GPU)")
    p.add_argument("--det-imgsz", type=int, help="YOLO image size (default 256 on CPU, 640 on a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-test-patients", type=int, help="fewer test patients: metrics refused (default 10)")
    p.add_argument("--bootstrap", type=int, help="patient-level bootstrap replicates for 95%% CIs (default 1000)")
    p.add_argument("--weights", help="classifier start: 'imagenet' (torchvision file in the torch cache, see "
                   "docs/imaging-trust.md) or a local state-dict FILE; default random")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_train)


def cmd_synth(args) -> int:
    from site_agent.imaging.synth import summary_line, synth_site

    print(summary_line(synth_site(args.out, args.site, args.seed, args.patients)))
    return 0


def cmd_train(args) -> int:
    try:
        import torch
    except ImportError:
        raise ConfigError("torch is not installed", hint="from a checkout: pip install -e '.[train]'") from None
    from pydantic import ValidationError

    from optima_common.errors import validation_summary
    from site_agent.imaging.pipeline import MammoConfig, train_mammography

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError("--epochs must be 1 or more")
    if not Path(args.data).is_dir():
        raise ConfigError(f"--data {args.data} is not a folder",
                          hint="create one with: site-agent images synth mammography --out DIR")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU", hint="use --device cpu")
    extra = {k: v for k, v in (("lr", args.lr), ("optimizer", args.optimizer), ("roi_size", args.roi_size),
                               ("backbone", args.backbone),
                               ("det_imgsz", args.det_imgsz), ("min_test_patients", args.min_test_patients),
                               ("bootstrap", args.bootstrap), ("weights", args.weights)) if v is not None}
    try:
        cfg = MammoConfig.for_device(device, args.epochs, seed=args.seed, **extra)
    except ValidationError as exc:
        raise ConfigError(f"bad option {validation_summary(exc)}") from None
    from site_agent.training.models import BACKBONES

    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {cfg.backbone!r}", hint=f"choose one of {', '.join(BACKBONES)}")
    progress = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    m = train_mammography(args.data, args.out, cfg, progress=progress)
    s1, s2, det = m["stage1"], m["stage2"], m["detection"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"

    def with_ci(stage, key):
        ci = stage.get("ci95", {}).get(key)
        return fmt(stage.get(key)) + (f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")

    det_line = (f"detection mAP50 {fmt(det['map50'])}, mAP50-95 {fmt(det['map50_95'])}" if det.get("map50") is not None
                else "no lesion boxes: whole-image classification")
    s2_line = with_ci(s2, "accuracy") if s2.get("reportable") else f"not reportable ({s2.get('refusal', 'no cases')})"
    print(f"mammography at {args.data}: {det_line}; "
          f"stage 1 AUROC {with_ci(s1, 'auroc')}, malignant precision {with_ci(s1, 'malignant_precision')}, "
          f"recall {with_ci(s1, 'malignant_recall')}, macro F1 {with_ci(s1, 'f1')}; stage 2 accuracy {s2_line}"
          f" ({m['data']['skipped_files']} file(s) skipped); wrote {Path(args.out) / 'metrics.json'} and plots "
          f"in {m['seconds']:.0f}s")
    return 0
