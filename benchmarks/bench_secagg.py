"""Seconds per federated round with and without SecAgg+ (in-process grid, Flower's own workflow
and mod), for a model of WEIGHTS float weights and SITES sites; the local "training" only sets
the weights, so the figure is the aggregation's own cost (keys, masks, quantization, unmasking).

    python benchmarks/bench_secagg.py [--weights 1000000] [--sites 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from flwr.clientapp import ClientApp
from torch import nn

from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.secagg import run_secagg_training
from coordinator.flower.training import run_federated_training
from site_agent.training.federated import handle_evaluate, register_task
from site_agent.training.secagg import handle_train_any, secagg_when_asked


class Fill:
    def __init__(self, weights: int):
        self.n = max(1, weights // 1000)

    def init_model(self, run_config):
        torch.manual_seed(0)
        return nn.Linear(1000, self.n)

    def local_train(self, model, site_data_dir: Path, run_config, global_model):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float((site_data_dir / "v.txt").read_text()))
        return 1, {}

    def local_evaluate(self, model, site_data_dir, run_config):
        return 1, {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=int, default=1_000_000)
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    register_task("bench_fill", Fill(args.weights))
    app = ClientApp()
    app.train(mods=[secagg_when_asked])(handle_train_any)
    app.evaluate()(handle_evaluate)
    with tempfile.TemporaryDirectory() as tmp:
        configs = {}
        for n in range(1, args.sites + 1):
            d = Path(tmp) / f"s{n}"
            d.mkdir()
            (d / "v.txt").write_text(str(0.01 * n))
            configs[n] = {"image-root-bench_fill": str(d)}
        for name, run in (("plain FedAvg", run_federated_training), ("SecAgg+", run_secagg_training)):
            t0 = time.perf_counter()
            run(InProcessGrid(app, configs), "bench_fill", rounds=args.rounds, run_config={},
                out_dir=Path(tmp) / name.replace(" ", "_"), min_replies=2, round_timeout=600)
            per_round = (time.perf_counter() - t0) / args.rounds
            print(f"{name}: {per_round:.2f} s per round ({args.weights:,} weights, {args.sites} sites, in process)")


if __name__ == "__main__":
    main()
