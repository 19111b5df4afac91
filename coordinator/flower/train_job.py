"""The ServerApp's "train" mode: a :class:`TrainRequest` run as plain FedAvg/FedProx rounds
(:mod:`coordinator.flower.training`) or as SecAgg+ rounds (:mod:`coordinator.flower.secagg`)."""

from __future__ import annotations

from coordinator.flower.secagg import run_secagg_training
from coordinator.flower.training import (
    TrainingSummary,
    TrainRequest,
    run_federated_training,
)
from optima_common.errors import TrainingError


def run_request(grid, request: TrainRequest) -> TrainingSummary:
    if request.secagg:
        return run_secagg_training(grid, request.task, rounds=request.rounds, run_config=request.run_config,
                                   out_dir=request.out, min_replies=request.min_replies,
                                   round_timeout=request.round_timeout, fedprox_mu=request.fedprox_mu, dp=request.dp,
                                   node_wait=request.node_wait, resume=request.resume,
                                   secagg_range=request.secagg_range, min_cell_floor=request.min_cell_floor)
    return run_federated_training(grid, request.task, rounds=request.rounds, run_config=request.run_config,
                                  out_dir=request.out, min_replies=request.min_replies,
                                  round_timeout=request.round_timeout, fedprox_mu=request.fedprox_mu, dp=request.dp,
                                  node_wait=request.node_wait, resume=request.resume,
                                  min_cell_floor=request.min_cell_floor)


def run_training_job(grid, raw: dict) -> dict:
    """The ServerApp's "train" mode: ``raw`` is the job file's JSON (a :class:`TrainRequest`);
    returns the outcome document (``ok`` plus the summary)."""
    from pydantic import ValidationError

    try:
        request = TrainRequest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise TrainingError(f"bad training job {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    summary = run_request(grid, request)
    return {"ok": True, "summary": summary.model_dump(mode="json")}
