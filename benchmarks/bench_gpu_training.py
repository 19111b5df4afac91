"""GPU training benchmark of the mammography classifier: our loop against a plain torchvision loop,
then the seed study's setting end to end.

    python benchmarks/bench_gpu_training.py --out bench-gpu.json             # on a CUDA GPU
    python benchmarks/bench_gpu_training.py --smoke --out bench-smoke.json   # tiny CPU run (any machine)

1. Throughput (images/s), same device, batch, input size and optimiser: our loop
   (``site_agent.training.loop.fit``: one-channel ResNet-50 classifier, on-device
   augmentation, bf16 autocast + channels_last on a GPU, BatchNorm re-estimation after fit) vs a
   plain torchvision ResNet-50 loop (bf16 autocast + channels_last too) over the same in-memory
   tensors. Warm-up steps are excluded from both.
2. The seed's setting end to end on a synthetic site: ``MammoConfig.for_device("cuda")``
   (ResNet-50 from ImageNet weights when the torchvision file is in the torch cache, SGD lr 1e-4,
   batch 32, 224 px ROIs, YOLO at 640 px, augmentation), epochs capped by ``--epochs``; wall
   time, stage metrics with patient-level 95% CIs and the Grad-CAM pointing game.

Without a CUDA GPU (and without ``--smoke``) it stops at once with one line and exit code 2.
Caches (torch, ultralytics, matplotlib) go under a temporary folder unless already set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class _Tensors:
    """An in-memory dataset of random one-channel images and binary labels."""

    def __init__(self, n: int, size: int):
        import torch

        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, size, size, generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def plain_loop(device, backbone: str, data: _Tensors, batch: int, steps: int, warmup: int, bf16: bool) -> float:
    """images/s of a plain torchvision loop (one-channel stem, Adam, cross-entropy)."""
    import torch
    import torchvision

    model = getattr(torchvision.models, backbone)(weights=None, num_classes=2)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                                         pin_memory=device.type == "cuda")
    done, t0 = 0, None
    model.train()
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                _sync(device)
                t0 = time.perf_counter()
            x = x.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= warmup + steps:
                break
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def our_loop(device, backbone: str, data: _Tensors, batch: int, steps: int, warmup: int, bf16: bool,
             workdir: Path) -> float:
    """images/s of site_agent.training.loop.fit (timed over ``steps`` after a ``warmup`` fit)."""
    from site_agent.training.loop import TrainConfig, fit
    from site_agent.training.models import build_classifier

    model = build_classifier(backbone, 2, in_channels=1)
    per_epoch = len(data) // batch
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-3, optimizer="adam", device=device.type,
                      precision="bf16" if bf16 else "fp32", channels_last=device.type == "cuda",
                      max_steps_per_epoch=max(1, min(warmup, per_epoch)), bn_recalibration_batches=0)
    fit(model, data, None, cfg, workdir / "warm.pt")  # warm-up: cuDNN autotuning, allocator
    cfg = cfg.model_copy(update={"epochs": max(1, -(-steps // per_epoch)), "max_steps_per_epoch": min(steps, per_epoch),
                                 "patience": 10_000})
    _sync(device)
    res = fit(model, data, None, cfg, workdir / "timed.pt")
    _sync(device)
    return res.examples_seen / sum(h.seconds for h in res.history)


def seed_setting_end_to_end(device, workdir: Path, patients: int, epochs: int, smoke: bool) -> dict:
    """The seed's mammography setting on a synthetic site, end to end (detection included)."""
    from site_agent.imaging.pipeline import MammoConfig, train_mammography
    from site_agent.imaging.synth import synth_site
    from site_agent.training.models import imagenet_file

    site = workdir / "site"
    synth_site(site, "site_a", seed=1, patients=patients)
    if smoke:
        cfg = MammoConfig.for_device("cpu", epochs, backbone="tiny", roi_size=32, det_imgsz=64, min_test_patients=1,
                                     bootstrap=100)
        weights_note = "smoke: tiny backbone, random weights"
    else:
        cfg = MammoConfig.for_device("cuda", epochs, min_test_patients=5)
        try:
            imagenet_file(cfg.backbone)
            weights_note = "ImageNet (torchvision file from the torch cache)"
        except Exception as exc:  # noqa: BLE001 - the one-line ConfigError: say so and run from random weights
            cfg = cfg.model_copy(update={"weights": None})
            weights_note = f"random weights: {exc}"
    t0 = time.perf_counter()
    m = train_mammography(site, workdir / "out", cfg)
    keep = ("n", "accuracy", "auroc", "f1", "malignant_precision", "malignant_recall", "malignant_f1", "ci95",
            "reportable", "refusal")
    return {"seconds": round(time.perf_counter() - t0, 1), "patients": patients, "epochs_cap": epochs,
            "weights": weights_note, "config": json.loads(cfg.model_dump_json()),
            "detection": m["detection"], "stage1": {k: m["stage1"].get(k) for k in keep},
            "stage2": {k: m["stage2"].get(k) for k in keep}, "explanations": m.get("explanations")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run: checks the script, measures nothing useful")
    ap.add_argument("--out", default="bench_gpu_training.json")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--patients", type=int, default=120, help="synthetic patients for the end-to-end run")
    ap.add_argument("--epochs", type=int, default=10, help="epoch cap of the end-to-end run")
    ap.add_argument("--skip-end-to-end", action="store_true")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    os.environ.setdefault("MPLCONFIGDIR", str(tmp / "mpl"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp / "yolo"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.smoke:
        device, backbone = torch.device("cpu"), "resnet18"
        args.batch_size, args.size, args.steps, args.warmup = 4, 32, 2, 1
        args.patients, args.epochs = 16, 1
    else:
        if not torch.cuda.is_available():
            print("bench_gpu_training: no CUDA GPU visible to torch; run it on a GPU machine, or with --smoke "
                  "for a tiny CPU check", file=sys.stderr)
            return 2
        device, backbone = torch.device("cuda"), "resnet50"
        torch.backends.cudnn.benchmark = True
    bf16 = device.type == "cuda"
    data = _Tensors(args.batch_size * max(4, args.steps // 2), args.size)
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "backbone": backbone, "batch": args.batch_size, "size": args.size,
              "precision": "bf16 autocast + channels_last" if bf16 else "fp32", "smoke": args.smoke}
    report["plain_torchvision_img_s"] = round(plain_loop(device, backbone, data, args.batch_size, args.steps,
                                                         args.warmup, bf16), 1)
    report["our_loop_img_s"] = round(our_loop(device, backbone, data, args.batch_size, args.steps, args.warmup, bf16,
                                              tmp), 1)
    report["ratio"] = round(report["our_loop_img_s"] / report["plain_torchvision_img_s"], 3)
    print(f"throughput on {report['device']}: ours {report['our_loop_img_s']} img/s, plain torchvision "
          f"{report['plain_torchvision_img_s']} img/s (ratio {report['ratio']})", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2))  # kept even if the end-to-end part fails
    if not args.skip_end_to_end:
        try:
            report["seed_setting"] = seed_setting_end_to_end(device, tmp / "e2e", args.patients, args.epochs,
                                                             args.smoke)
        except Exception as exc:  # noqa: BLE001 - one line, the throughput figures are already written
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            report["seed_setting_error"] = f"{type(exc).__name__}: {line}"
            Path(args.out).write_text(json.dumps(report, indent=2))
            print(f"bench_gpu_training: the end-to-end run failed: {report['seed_setting_error']} "
                  f"(throughput kept in {args.out})", file=sys.stderr)
            return 1
        s1 = report["seed_setting"]["stage1"]
        print(f"seed setting end to end: {report['seed_setting']['seconds']} s, stage 1 AUROC {s1.get('auroc')} "
              f"CI {s1.get('ci95', {}).get('auroc')}", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
