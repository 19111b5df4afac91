"""``coordinator train``: the command line of federated image training.

It turns options into a typed :class:`TrainRequest` and starts the ServerApp's "train" mode
on the SuperLink over ``flwr run``; the rounds themselves are in
:mod:`coordinator.flower.training`.
"""

from __future__ import annotations

import os
from pathlib import Path

from coordinator.flower.reply_audit import DEFAULT_FLOOR
from coordinator.flower.training import TASKS, DPConfig, TrainingSummary, TrainRequest
from optima_common.errors import TrainingError


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="federated training of a site image model (Flower FedAvg/FedProx)")
    p.add_argument("task", choices=TASKS)
    p.add_argument("--out", default="federated-training", help="folder for global_round_<r>.npz and the history")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-replies", type=int, default=2, help="quorum: fewer good replies in a round stops the run")
    p.add_argument("--round-timeout", type=float, default=900.0, help="seconds a round waits for the sites")
    p.add_argument("--node-wait", type=float, default=60.0, help="seconds to wait for --min-replies sites to connect")
    p.add_argument("--fedprox-mu", type=float, default=0.0, help="FedProx proximal weight (0: plain FedAvg)")
    p.add_argument("--dp-clip", type=float, help="central DP: clip each site's update to this L2 norm")
    p.add_argument("--dp-noise", type=float, help="central DP: noise multiplier (std = multiplier x clip / sites)")
    p.add_argument("--dp-delta", type=float, default=1e-5, help="delta at which epsilon is reported")
    p.add_argument("--dp-max-noise-ratio", type=float, default=1.0,
                   help="refuse DP when expected noise norm / largest mean update exceeds this")
    p.add_argument("--secagg", action="store_true",
                   help="secure aggregation (Flower SecAgg+): the coordinator sees only the sum of the sites' "
                        "updates; DP clipping and noise move to the sites")
    p.add_argument("--secagg-range", type=float, default=8.0,
                   help="SecAgg+ clipping range: every update value must lie within +-this")
    p.add_argument("--min-cell-floor", type=int, default=DEFAULT_FLOOR,
                   help="the network's floor for the minimum cell count each site's reply states; "
                        "a reply stating less (or none) is not pooled")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out (round k+1)")
    p.add_argument("--epochs", type=int, default=1, help="local epochs per round at each site")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backbone", help="model backbone the sites build (task default when omitted)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--federation", default="optima", help="SuperLink connection name in $FLWR_HOME/config.toml")
    p.add_argument("--timeout", type=float, default=7200, help="seconds the whole run may take")
    p.set_defaults(func=cli_train)


def request_from_args(args) -> TrainRequest:
    if (args.dp_clip is None) != (args.dp_noise is None):
        raise TrainingError("give both --dp-clip and --dp-noise for differential privacy, or neither")
    from pydantic import ValidationError

    try:
        dp = DPConfig(clip_norm=args.dp_clip, noise_multiplier=args.dp_noise, delta=args.dp_delta,
                      max_noise_ratio=args.dp_max_noise_ratio) if args.dp_clip is not None else None
        run_config = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "device": args.device,
                      "seed": args.seed}
        if args.backbone:
            run_config["backbone"] = args.backbone
        return TrainRequest(task=args.task, rounds=args.rounds, min_replies=args.min_replies,
                            round_timeout=args.round_timeout, node_wait=args.node_wait, out=Path(args.out).resolve(),
                            fedprox_mu=args.fedprox_mu, dp=dp, resume=args.resume, run_config=run_config,
                            secagg=args.secagg, secagg_range=args.secagg_range,
                            min_cell_floor=args.min_cell_floor)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise TrainingError(f"bad training option {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def cli_train(args) -> int:
    """Start the ServerApp's "train" mode on the SuperLink named by ``--federation``."""
    from coordinator.flower.network import flwr_run

    request = request_from_args(args)
    outcome = flwr_run("train", request.model_dump(mode="json"), workdir=request.out / "run", env=dict(os.environ),
                       federation=args.federation, timeout=args.timeout)
    if not outcome.get("ok"):
        raise TrainingError(f"federated training failed: {outcome.get('error', 'no error reported')}")
    summary = TrainingSummary.model_validate(outcome["summary"])
    print(describe(summary, request.out))
    return 0


def describe(summary: TrainingSummary, out: Path) -> str:
    last = summary.rounds[-1]
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(last.eval_metrics.items()))
    eps = f"; epsilon {summary.epsilon:.2f} at delta {summary.dp.delta:g}" if summary.epsilon is not None else ""
    if summary.secure_aggregation:
        eps += "; secure aggregation (SecAgg+)"
    refused = sum(len(r.refused) for r in summary.rounds)
    if refused:
        eps += f"; {refused} replies refused at the coordinator (listed per round in the history)"
    return (f"{len(summary.rounds)} rounds of federated {summary.task} training over {len(summary.nodes)} sites; "
            f"last round {last.replies} replies, evaluation: {metrics or 'none'}{eps}; "
            f"global model {Path(out) / summary.final_checkpoint}"
            + (f"; best round by pooled {summary.selection_metric}: {summary.best_round}" if summary.best_round else ""))
