"""Federated training of a site image model over any Flower ``Grid`` (numpy only, no torch).

``run_federated_training(grid, task, ...)``: the starting weights come from one site (a train
message with ``init = True``), then each round sends the global weights to every node, waits at
most ``round_timeout`` seconds, requires ``min_replies`` good replies (else
:class:`TrainingError`), averages them (FedAvg weighted by ``num-examples``; FedProx is the
sites' proximal term, ``fedprox_mu`` in the config), checkpoints ``global_round_<r>.npz``
atomically, sends evaluate messages and writes the weighted metrics of every round to
``training_history.json``. A dead site only costs the timeout. Every train and evaluate reply
is re-audited before it is pooled (:mod:`coordinator.flower.reply_audit`, with the minimum cell
count the site states and the network's ``min_cell_floor``); a reply that fails is left out
and listed under the round's ``refused``.

Optional central differential privacy (:class:`DPConfig`): each site's update of the TRAINABLE
weights (the keys the site lists when it sends the starting model) is clipped to L2 norm
``clip_norm``, the clipped updates are averaged UNWEIGHTED (so one site's influence is
bounded), and Gaussian noise of std ``noise_multiplier * clip_norm / n_replies`` is added (as
Flower's server-side fixed clipping). Buffers (BatchNorm statistics, which travel as moments,
and constants) are averaged without noise, so pooled variances stay non-negative; they are not
covered by the DP guarantee. The noise comes from the operating system's CSPRNG
(``secrets``), never from the public ``--seed``, and its seed is written nowhere. Epsilon is
reported per round (site-level DP, add/remove one site, no sampling amplification); each
site also charges every round to its own budget ledger. A run is refused when the noise would
swamp the update: expected noise norm over the largest possible mean update
(``z * sqrt(trainable weights) / sites``) above ``max_noise_ratio``.

``resume``: continue a stopped run from its last checkpoint (round k+1) with its history. Each
round records ``start_sha256``, the digest of the weights it sent (:func:`weights_sha256`), so
round k+1 of a resumed run can be checked against ``global_round_<k>.npz``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import secrets
import time
from functools import partial
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from pydantic import BaseModel, ConfigDict, Field

from coordinator.flower.exchange import send_and_receive
from coordinator.flower.pooled_eval import (  # noqa: F401 - metrics_from_confusion is part of this module's API
    _pooled_metrics,
    _weighted_metrics,
    metrics_from_confusion,
)
from coordinator.flower.reply_audit import DEFAULT_FLOOR, audit_replies
from optima_common import protocol as P
from optima_common.errors import TrainingError
from optima_common.fileio import write_atomic
from optima_common.privacy import (
    DP_CLIP,
    DP_DELTA,
    DP_NOISE,
    noise_to_signal,
    sites_needed,
)

log = logging.getLogger(__name__)


class DPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clip_norm: float = Field(gt=0)
    noise_multiplier: float = Field(gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    max_noise_ratio: float = Field(1.0, gt=0)  # refuse when noise norm / largest update norm exceeds it


class RoundRecord(BaseModel):
    round: int
    replies: int
    failed: list[str]
    num_examples: int
    train_metrics: dict[str, float]
    eval_replies: int
    eval_metrics: dict[str, float]
    checkpoint: str
    epsilon: float | None = None
    seconds: float
    start_sha256: str | None = None  # the global weights this round trained from (weights_sha256)
    refused: list[str] = Field(default_factory=list)  # replies the coordinator's re-audit kept out of pooling


class TrainingSummary(BaseModel):
    task: str
    rounds: list[RoundRecord]
    nodes: list[int]
    final_checkpoint: str
    dp: DPConfig | None = None
    epsilon: float | None = None
    accountant: str | None = None
    secure_aggregation: bool = False
    best_round: int | None = None  # the round a pooled validation metric chooses
    selection_metric: str | None = None


# pooled validation metrics that choose the round, first found wins (higher is better)
SELECTION_METRICS = ("val_stage1_auroc_pooled", "val_tumor_auroc_pooled", "val_stage1_accuracy", "val_accuracy")


def choose_round(rounds: list[RoundRecord]) -> tuple[int | None, str | None]:
    """The round with the best pooled VALIDATION metric (never a test metric); ties: the earlier."""
    for name in SELECTION_METRICS:
        scored = [(r.eval_metrics[name], -r.round) for r in rounds if name in r.eval_metrics]
        if scored:
            return -max(scored)[1], name
    return None, None


# --- weights as numpy ---------------------------------------------------------------------
def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def numpy_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def weights_sha256(arrays: dict[str, np.ndarray]) -> str:
    """A digest of a set of weights (keys, dtypes, shapes and bytes, keys sorted): the round's
    starting point in the history, so a resumed run can be checked against its checkpoint."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}\x1f{a.dtype.str}\x1f{a.shape}\x1e".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(arrays: dict[str, np.ndarray], path: Path) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())
    return path


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def fedavg(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Weighted mean of each array by the sites' example counts (integer arrays rounded back)."""
    total = sum(n for _, n in updates)
    if total <= 0:
        weights = [1.0 / len(updates)] * len(updates)
    else:
        weights = [n / total for _, n in updates]
    out = {}
    for key, first in updates[0][0].items():
        acc = sum(w * arrays[key].astype(np.float64) for (arrays, _), w in zip(updates, weights))
        out[key] = np.rint(acc).astype(first.dtype) if np.issubdtype(first.dtype, np.integer) else acc.astype(first.dtype)
    return out


BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def default_trainable(arrays: dict[str, np.ndarray]) -> list[str]:
    """Float arrays that are not BatchNorm buffers (when a site did not list its parameters)."""
    return [k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating) and not k.endswith(BUFFER_SUFFIXES)]


def noise_rng() -> np.random.Generator:
    """A generator seeded from the operating system's CSPRNG (128 bits); the seed is kept nowhere."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def dp_aggregate(global_arrays: dict[str, np.ndarray], replies: list[dict[str, np.ndarray]], dp: DPConfig,
                 rng: np.random.Generator, trainable: list[str] | None = None) -> dict[str, np.ndarray]:
    """Clip each site's update of the ``trainable`` arrays to ``clip_norm`` (L2 over all of them),
    average unweighted, add N(0, (noise_multiplier * clip_norm / n)^2); every other array
    (BatchNorm moments, integer counters): the plain unweighted mean, no noise."""
    keys = default_trainable(global_arrays) if trainable is None else [k for k in trainable if k in global_arrays]
    n = len(replies)
    mean_update = {k: np.zeros(global_arrays[k].shape, np.float64) for k in keys}
    for arrays in replies:
        delta = {k: arrays[k].astype(np.float64) - global_arrays[k] for k in keys}
        norm = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
        scale = min(1.0, dp.clip_norm / norm) if norm > 0 else 1.0
        for k in keys:
            mean_update[k] += delta[k] * scale / n
    std = dp.noise_multiplier * dp.clip_norm / n
    out = fedavg([(a, 1) for a in replies])  # buffers: BatchNorm moments, batch counters
    for k in keys:
        noisy = global_arrays[k] + mean_update[k] + rng.normal(0.0, std, size=mean_update[k].shape)
        out[k] = noisy.astype(global_arrays[k].dtype)
    return out


def check_noise(dp: DPConfig, n_sites: int, dim: int) -> float:
    """The noise-to-signal ratio; :class:`TrainingError` when it is above ``dp.max_noise_ratio``."""
    ratio = noise_to_signal(dp.noise_multiplier, n_sites, dim)
    if ratio > dp.max_noise_ratio:
        raise TrainingError(
            f"DP noise would swamp the update: expected noise norm {ratio:.3g}x the largest mean update with "
            f"{n_sites} site(s), noise multiplier {dp.noise_multiplier:g} and {dim:,} trainable weights "
            f"(needs {sites_needed(dp.noise_multiplier, dim, dp.max_noise_ratio):,} sites per round)",
            hint="a smaller model, more sites, or --dp-max-noise-ratio to run anyway")
    return ratio


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon of ``rounds`` Gaussian releases of sensitivity 1 and noise ``noise_multiplier``
    via Renyi DP (order a: rounds*a/(2 sigma^2)) converted at ``delta``; optimised in closed
    form: rho + 2*sqrt(rho*ln(1/delta)) with rho = rounds/(2 sigma^2)."""
    rho = rounds / (2.0 * noise_multiplier**2)
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def _epsilon(dp: DPConfig, rounds: int, population: int) -> tuple[float, str]:
    """Flower's RDP accountant (needs ``flwr[dp]``) when importable, else the closed form."""
    try:
        from flwr.serverapp import (
            GaussianPrivacyEvent,
            NeighboringRelation,
            PrivacyConfig,
            SamplingMethod,
        )
        from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

        acc = RdpAccountant(PrivacyConfig(target_delta=dp.delta, population_size=population,
                                          neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                          sampling_method=SamplingMethod.NO_AMPLIFICATION))
        acc.compose(GaussianPrivacyEvent(dp.noise_multiplier, population, population), count=rounds)
        return float(acc.get_epsilon(dp.delta)), "flwr RdpAccountant"
    except ImportError:
        return gaussian_epsilon(dp.noise_multiplier, rounds, dp.delta), "closed-form Gaussian RDP"


# --- messages ---------------------------------------------------------------------------
def _config(task: str, run_config: dict, **extra) -> ConfigRecord:
    values = {k: v for k, v in {**run_config, **extra, "task": task}.items() if v is not None}
    return ConfigRecord(values)


def _round_content(record: ArrayRecord, task: str, run_config: dict, rnd: int, node: int) -> RecordDict:
    return RecordDict({"arrays": record, P.CONFIG_RECORD: _config(task, run_config, round=rnd)})


def _send(grid, nodes, content_for, message_type: str, timeout: float, group: str) -> tuple[list[Message], list[str]]:
    msgs = [Message(content=content_for(node), dst_node_id=node, message_type=message_type, group_id=group)
            for node in nodes]
    replies = send_and_receive(grid, msgs, timeout=timeout)
    # the SuperLink answers for an unavailable node itself (its own id as the source): name the
    # node a reply is for by the message it replies to
    dst = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs if m.metadata.message_id}
    ok, failed = [], []
    answered = set()
    for rep in replies:
        node = dst.get(rep.metadata.reply_to_message_id, rep.metadata.src_node_id)
        answered.add(node)
        if rep.has_error():
            failed.append(f"node {node}: {rep.error.reason}")
        else:
            ok.append(rep)
    failed += [f"node {n}: no reply within {timeout:g}s" for n in nodes if n not in answered]
    return ok, failed


def initial_weights(grid, task: str, run_config: dict, nodes: list[int],
                    timeout: float) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Ask the sites in turn for the task's seeded starting model until one answers; also the
    keys of its trainable parameters when the site lists them."""
    reasons = []
    for node in nodes:
        ok, failed = _send(grid, [node], lambda n: RecordDict({P.CONFIG_RECORD: _config(task, run_config, init=True)}),
                           MessageType.TRAIN, timeout, "init")
        if ok:
            content = ok[0].content
            info = content.config_records.get("model-info")
            trainable = [str(k) for k in info["trainable"]] if info is not None and "trainable" in info else None
            return record_to_numpy(content.array_records["arrays"]), trainable
        reasons += failed
    raise TrainingError(f"no site returned a starting model for task {task!r}: {'; '.join(reasons)[:300]}")


def _connected(grid, fixed: list[int] | None, want: int, wait: float) -> list[int]:
    """The connected nodes, waiting up to ``wait`` seconds for at least ``want`` of them."""
    deadline = time.monotonic() + wait
    while True:
        nodes = sorted(fixed if fixed is not None else grid.get_node_ids())
        if len(nodes) >= want or time.monotonic() >= deadline:
            return nodes
        time.sleep(1.0)


def _resume_state(out_dir: Path, task: str) -> tuple[list[RoundRecord], dict[str, np.ndarray]] | None:
    """The history and last checkpoint of a stopped run in ``out_dir`` (None: nothing to resume)."""
    path = out_dir / "training_history.json"
    if not path.is_file():
        return None
    try:
        prior = TrainingSummary.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise TrainingError(f"cannot resume: {path} is unreadable") from exc
    if prior.task != task:
        raise TrainingError(f"cannot resume: {out_dir} holds a {prior.task} run, not {task}")
    if not prior.rounds:
        return None
    ckpt = out_dir / prior.rounds[-1].checkpoint
    if not ckpt.is_file():
        raise TrainingError(f"cannot resume: checkpoint {ckpt} is missing")
    return list(prior.rounds), load_checkpoint(ckpt)


def run_federated_training(grid, task: str, *, rounds: int, run_config: dict, out_dir: Path, min_replies: int,
                           round_timeout: float, fedprox_mu: float = 0.0, dp: DPConfig | None = None,
                           nodes: list[int] | None = None, node_wait: float = 0.0,
                           resume: bool = False, min_cell_floor: int = DEFAULT_FLOOR) -> TrainingSummary:
    """``nodes``: a fixed set of node ids (default: whoever is connected, asked again each
    round); ``node_wait``: seconds to wait at the start for ``min_replies`` nodes to connect;
    ``resume``: continue from the last checkpoint in ``out_dir`` (round k+1 up to ``rounds``);
    ``min_cell_floor``: the network's floor for the minimum cell count each reply states
    (:mod:`coordinator.flower.reply_audit`: a reply that fails the re-audit is not pooled)."""
    out_dir = Path(out_dir)
    fixed = nodes
    nodes = _connected(grid, fixed, min_replies, node_wait)
    seen = set(nodes)
    if rounds < 1 or min_replies < 1:
        raise TrainingError("rounds and min_replies must be at least 1")
    if len(nodes) < min_replies:
        raise TrainingError(f"only {len(nodes)} site(s) connected, the quorum is {min_replies}",
                            ) from None
    run_config = {**run_config, "fedprox_mu": float(fedprox_mu)}
    if dp is not None:
        run_config.update({DP_NOISE: dp.noise_multiplier, DP_CLIP: dp.clip_norm, DP_DELTA: dp.delta})
    start_weights, trainable = initial_weights(grid, task, run_config, nodes, round_timeout)
    prior = _resume_state(out_dir, task) if resume else None
    history: list[RoundRecord] = []
    global_arrays = start_weights
    if prior is not None:
        history, global_arrays = prior
        if set(global_arrays) != set(start_weights):
            raise TrainingError(f"cannot resume: the checkpoint in {out_dir} does not fit the sites' {task} model")
    first = len(history) + 1
    if first > rounds:
        raise TrainingError(f"nothing to resume: {out_dir} already holds {len(history)} of {rounds} rounds",
                            hint="raise --rounds")
    rng = noise_rng() if dp is not None else None
    dim = sum(int(global_arrays[k].size) for k in (trainable or default_trainable(global_arrays)))
    if dp is not None:
        check_noise(dp, len(nodes), dim)
    accountant = epsilon = None
    summary = None
    for r in range(first, rounds + 1):
        t0 = time.perf_counter()
        nodes = _connected(grid, fixed, 0, 0.0)
        seen |= set(nodes)
        start_sha = weights_sha256(global_arrays)
        record = numpy_to_record(global_arrays)
        content = partial(_round_content, record, task, run_config, r)
        ok, failed = _send(grid, nodes, content, MessageType.TRAIN, round_timeout, f"train-{r}")
        ok, refused = audit_replies(ok, "train", min_cell_floor)
        if len(ok) < min_replies:
            raise TrainingError(f"round {r}: {len(ok)} of {len(nodes)} sites replied usably, the quorum is "
                                f"{min_replies} ({'; '.join(failed + refused)[:300]})")
        arrays = [record_to_numpy(rep.content.array_records["arrays"]) for rep in ok]
        n_train, train_metrics = _weighted_metrics(ok)
        counts = [int(rep.content.metric_records["metrics"].get("num-examples", 0)) for rep in ok]
        if dp is not None:
            check_noise(dp, len(ok), dim)
            global_arrays = dp_aggregate(global_arrays, arrays, dp, rng, trainable)
            epsilon, accountant = _epsilon(dp, r, len(nodes))
        else:
            global_arrays = fedavg(list(zip(arrays, counts)))
        ckpt = save_checkpoint(global_arrays, out_dir / f"global_round_{r}.npz")
        record = numpy_to_record(global_arrays)
        content = partial(_round_content, record, task, run_config, r)
        ev_ok, ev_failed = _send(grid, nodes, content, MessageType.EVALUATE, round_timeout, f"evaluate-{r}")
        ev_ok, ev_refused = audit_replies(ev_ok, "evaluate", min_cell_floor)
        _, eval_metrics = _pooled_metrics(ev_ok)
        history.append(RoundRecord(round=r, replies=len(ok), failed=failed + ev_failed, num_examples=n_train,
                                   train_metrics=train_metrics, eval_replies=len(ev_ok), eval_metrics=eval_metrics,
                                   checkpoint=ckpt.name, epsilon=epsilon, seconds=time.perf_counter() - t0,
                                   start_sha256=start_sha, refused=refused + ev_refused))
        best, chosen_by = choose_round(history)
        summary = TrainingSummary(task=task, rounds=history, nodes=sorted(seen), final_checkpoint=ckpt.name, dp=dp,
                                  epsilon=epsilon, accountant=accountant, best_round=best, selection_metric=chosen_by)
        write_atomic(out_dir / "training_history.json", summary.model_dump_json(indent=2).encode())
        log.info("round %d: %d replies, eval %s", r, len(ok), json.dumps(eval_metrics))
    return summary


# --- the `coordinator train TASK` command -------------------------------------------------
TASKS = ("pathology", "mammography")


class TrainRequest(BaseModel):
    """What ``coordinator train`` asks for: the JSON job file the ServerApp reads (mode "train")."""

    model_config = ConfigDict(extra="forbid")

    task: str
    rounds: int = Field(3, ge=1)
    min_replies: int = Field(2, ge=1)
    round_timeout: float = Field(900.0, gt=0)
    node_wait: float = Field(60.0, ge=0)
    out: Path
    fedprox_mu: float = Field(0.0, ge=0)
    dp: DPConfig | None = None
    resume: bool = False
    secagg: bool = False  # Flower SecAgg+ fit rounds (coordinator.flower.secagg)
    secagg_range: float = Field(8.0, gt=0)
    min_cell_floor: int = Field(DEFAULT_FLOOR, ge=2)  # the network's floor for the sites' minimum cell counts
    run_config: dict[str, float | int | str | bool] = Field(default_factory=dict)  # sent to the sites
