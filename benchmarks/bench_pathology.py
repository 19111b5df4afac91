"""Pathology throughput on the current device: training images/s and tiling patches/s.

    python benchmarks/bench_pathology.py                       # CPU: small settings
    python benchmarks/bench_pathology.py --device cuda --batch-size 128 --size 256 --steps 50

Training: our loop (site_agent.training.loop.fit: augmentation, autocast bf16 + channels_last on
a GPU) on ResNet-50 against a plain torchvision ResNet-50 loop (same batch, size, precision,
optimizer) on the same device; prints both and the ratio. Tiling: patches per second read from
a synthetic pyramidal TIFF (grid + annotation overlap + tissue mask + JPEG decode), in one
process and with DataLoader workers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_resnet50(device, batch: int, size: int, steps: int, bf16: bool) -> float:
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None, num_classes=8).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 8, (batch,), device=device)
    warm = 3
    for i in range(steps + warm):
        if i == warm:
            _sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def our_loop(device, backbone: str, batch: int, size: int, steps: int, bf16: bool) -> float:
    import torch
    from torch.utils.data import TensorDataset

    from site_agent.training.loop import TrainConfig, fit
    from site_agent.training.models import build_classifier

    n = batch * (steps + 3)
    ds = TensorDataset(torch.rand(n, 3, size, size), torch.randint(0, 8, (n,)))
    model = build_classifier(backbone, 8)
    cfg = TrainConfig(epochs=1, batch_size=batch, device=device.type, precision="bf16" if bf16 else "fp32",
                      channels_last=device.type == "cuda", max_steps_per_epoch=3)
    with tempfile.TemporaryDirectory() as tmp:
        fit(model, ds, None, cfg, Path(tmp) / "w.pt")  # warm-up (cudnn autotune, allocator)
        cfg = cfg.model_copy(update={"max_steps_per_epoch": steps})
        res = fit(model, ds, None, cfg, Path(tmp) / "w.pt")
    # the epoch's own clock (loader, augmentation, steps; it ends before the checkpoint write)
    return res.examples_seen / sum(h.seconds for h in res.history)


def tiling(workers: int) -> tuple[float, float, int]:
    import torch

    from site_agent.pathology.annotations import load_geojson
    from site_agent.pathology.slides import Slide
    from site_agent.pathology.synth import generate_site
    from site_agent.pathology.tiling import PatchDataset, TilingParams, tile_slide

    with tempfile.TemporaryDirectory() as tmp:
        generate_site(Path(tmp), "bench", 0, slides=1, width=4096, height=4096)
        slide_path = next(Path(tmp, "slides").glob("*.tiff"))
        anns = load_geojson(next(Path(tmp, "annotations").glob("*.geojson")))
        params = TilingParams(stride=64, min_tissue=0.0)  # overlapping grid: many patches per slide
        t0 = time.perf_counter()
        with Slide(slide_path) as slide:
            patches = tile_slide(slide, anns, params)
        t_grid = time.perf_counter() - t0
        ds = PatchDataset([slide_path], patches, params, input_size=256, cache=False)
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        single = len(ds) / (time.perf_counter() - t0 + t_grid)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers)
        t0 = time.perf_counter()
        for _ in loader:
            pass
        parallel = len(ds) / (time.perf_counter() - t0 + t_grid)
    return single, parallel, len(patches)


def main(argv: list[str] | None = None) -> int:
    import os

    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-tiling", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    batch = args.batch_size or (128 if gpu else 8)
    size = args.size or (256 if gpu else 128)
    steps = args.steps or (50 if gpu else 10)
    name = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; batch {batch}, {size} px, precision {'bf16' if gpu else 'fp32'}")
    if not args.skip_training:
        ours = our_loop(device, args.backbone, batch, size, steps, gpu)
        plain = plain_resnet50(device, batch, size, steps, gpu)
        print(f"training: ours ({args.backbone}) {ours:,.1f} img/s; plain torchvision ResNet-50 {plain:,.1f} img/s; "
              f"ratio {ours / plain:.2f}")
    if args.skip_tiling:
        return 0
    single, parallel, n = tiling(args.workers)
    print(f"tiling: {n} patches of 256 px: {single:,.0f} patches/s in one process, {parallel:,.0f} patches/s "
          f"with {args.workers} DataLoader workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
