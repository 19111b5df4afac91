"""Federated training rounds under secure aggregation (Flower SecAgg+), numpy only.

``run_secagg_training`` builds a Flower ``LegacyContext`` with :class:`UpdateStrategy` and runs
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...), evaluate_workflow=PooledEvaluation(...))``
on the Grid. In each round the SecAgg+ workflow sets up keys with the sites, sends them the
global weights (legacy ``FitIns``), collects masked integer vectors and unmasks only their SUM
over the surviving sites; :class:`UpdateStrategy` turns it into the new global model (global +
unweighted mean of the sites' updates). :class:`PooledEvaluation` then checkpoints the round,
asks every site to evaluate (plain messages, as without SecAgg+) and writes the history.

Dropouts: SecAgg+ recovers the masks of a site that dies after the key exchange from its
neighbours' shares, as long as at least ``threshold`` sites survive. The threshold is the larger
of ``min_replies``, 2 and a strict majority of the sites in the round (below a majority, a
coordinator could gather both kinds of shares of one site and unmask it). With fewer survivors
the workflow halts, the global model is not updated, and the run stops with
:class:`TrainingError` (exit code ``TRAINING``): it never continues on a partial round.

Differential privacy is distributed: each site clips its update and adds its share of the noise
(:mod:`site_agent.training.secagg`). With t of n sites surviving, the released mean carries a
noise multiplier of ``z * sqrt(t / n)``; the per-round epsilon reported here uses the survivors
of each round.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import Context, RecordDict
from flwr.common import (
    FitIns,
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from coordinator.flower import training as T
from coordinator.flower.reply_audit import (
    DEFAULT_FLOOR,
    audit_replies,
    audit_train,
    refusal,
    without_policy,
)
from optima_common.errors import TrainingError
from optima_common.fileio import write_atomic
from optima_common.privacy import epsilon_from_rho, gaussian_rho

log = logging.getLogger(__name__)

KEYS_DIGEST = "keys-digest"  # as site_agent.training.secagg (the layers do not import each other)
RANGE = "secagg-range"


def keys_digest(keys) -> str:
    import hashlib

    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def secagg_threshold(n_sites: int, min_replies: int) -> int:
    """Survivors SecAgg+ needs to unmask a round: at least min_replies, 2 and a strict majority."""
    return max(min_replies, 2, n_sites // 2 + 1)


def dropout_lines(missing: list, failures) -> list[str]:
    """One line per site asked for a masked update that sent none. The workflow's failures do not
    name their node: a site that died sends nothing, or the SuperLink answers for it ("Node
    Unavailable") once it has missed its heartbeats, which of the two depends on timing. With one
    such site its failures are its own and are appended to its line; otherwise they follow."""
    details = list(dict.fromkeys(str(f)[:300] for f in failures))  # the workflow lists a failure twice
    lines = [f"node {n}: sent no masked update (dropped out of the SecAgg+ round)" for n in missing]
    if len(lines) == 1 and details:
        return [f"{lines[0]}: {'; '.join(details)}"]
    return lines + details


class UpdateStrategy(Strategy):
    """Starts from the site's model; each round sends the global weights with the run config to
    every connected site and adds the securely summed mean update to the global weights."""

    def __init__(self, start: dict[str, np.ndarray], task: str, run_config: dict, offset: int,
                 min_cell_floor: int = DEFAULT_FLOOR):
        self.floor = min_cell_floor
        self.keys = list(start)
        self.arrays = dict(start)
        self.task, self.run_config, self.offset = task, run_config, offset
        self.done: dict[int, dict] = {}  # real round -> {"survivors", "failed", "metrics"}
        self.sampled: dict[int, int] = {}  # real round -> sites asked
        self.asked: dict[int, list] = {}  # real round -> node ids asked

    def _params(self) -> Parameters:
        return ndarrays_to_parameters([self.arrays[k] for k in self.keys])

    def initialize_parameters(self, client_manager) -> Parameters | None:
        return self._params()

    def configure_fit(self, server_round, parameters, client_manager):
        rnd = server_round + self.offset
        config = dict(T._config(self.task, self.run_config, round=rnd, **{KEYS_DIGEST: keys_digest(self.keys)}))
        ins = FitIns(parameters, config)
        chosen = [(proxy, ins) for _, proxy in sorted(client_manager.all().items())]
        self.sampled[rnd] = len(chosen)
        self.asked[rnd] = [getattr(proxy, "node_id", proxy.cid) for proxy, _ in chosen]
        return chosen

    def aggregate_fit(self, server_round, results, failures):
        rnd = server_round + self.offset
        if not results:
            return None, {}
        mean_update = parameters_to_ndarrays(results[0][1].parameters)  # the same unmasked mean on every result
        floats = [k for k in self.keys if np.issubdtype(self.arrays[k].dtype, np.floating)]
        if len(mean_update) != len(floats):
            raise TrainingError(f"round {rnd}: the secure sum has {len(mean_update)} arrays, the model "
                                f"{len(floats)} float arrays")
        for k, upd in zip(floats, mean_update):
            self.arrays[k] = (self.arrays[k].astype(np.float64) + upd).astype(self.arrays[k].dtype)
        metrics, refused = [], []
        for proxy, res in results:  # the clear scalars are re-audited; the masked update is already summed
            m = {k: float(v) for k, v in res.metrics.items() if isinstance(v, (int, float))}
            why = audit_train(m, self.floor)
            if why is not None:
                refused.append(refusal(getattr(proxy, "node_id", proxy.cid), f"train metrics not pooled: {why}"))
                log.warning("%s", refused[-1])
                continue
            m = without_policy(m)
            metrics.append((int(m.pop("num-examples", 0)), m))
        answered = {getattr(proxy, "node_id", proxy.cid) for proxy, _ in results}
        missing = [n for n in self.asked.get(rnd, []) if n not in answered]
        failed = dropout_lines(missing, failures)
        self.done[rnd] = {"survivors": len(results), "failed": failed,
                          "metrics": metrics, "refused": refused}
        return self._params(), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []  # evaluation is PooledEvaluation's (plain messages)

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class SecAggPlus(SecAggPlusWorkflow):
    """Flower 1.42's SecAgg+ workflow, except that a site that does not answer the setup stage
    is left out of the round. In 1.42 such a site stays among the sampled sites; the unmask
    stage then looks for shares of its keys, which it never sent, finds none and halts the round
    ("Not enough shares to recover secret"), so one site that is down at the start of a round
    would abort it. A site left out here has sent no key and added no mask, so the round's
    security does not change; its threshold stays that of the sites first asked."""

    def setup_stage(self, grid, context, state) -> bool:
        ok = super().setup_stage(grid, context, state)
        if not state.nid_to_neighbours:  # stopped before the setup messages went out
            return ok
        alive = set(state.active_node_ids)
        state.sampled_node_ids = alive
        state.nid_to_neighbours = {nid: nb & alive for nid, nb in state.nid_to_neighbours.items() if nid in alive}
        return self._check_threshold(state)


def _weighted(metrics: list[tuple[int, dict]]) -> tuple[int, dict[str, float]]:
    total, sums, weights = 0, {}, {}
    for n, m in metrics:
        total += n
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + n * v
            weights[k] = weights.get(k, 0) + n
    return total, {k: sums[k] / weights[k] for k in sums if weights[k] > 0}


class PooledEvaluation:
    """DefaultWorkflow's evaluate step: abort on a halted round, else checkpoint, evaluate at
    every site, pool the metrics and write the history."""

    def __init__(self, strategy: UpdateStrategy, *, task, run_config, out_dir: Path, history, nodes, timeout,
                 dp: T.DPConfig | None, dim: int, min_replies: int, min_cell_floor: int = DEFAULT_FLOOR):
        self.s, self.task, self.run_config, self.out_dir = strategy, task, run_config, out_dir
        self.history, self.nodes, self.timeout, self.dp, self.dim = history, nodes, timeout, dp, dim
        self.min_replies, self.floor = min_replies, min_cell_floor
        self.rho = 0.0  # zCDP spent so far (set from the history on resume)
        self.summary: T.TrainingSummary | None = None
        self.t0 = time.perf_counter()

    def __call__(self, grid, context: Context) -> None:
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        rnd = cast(int, cfg[WorkflowKey.CURRENT_ROUND]) + self.s.offset
        done = self.s.done.get(rnd)
        if done is None or done["survivors"] < self.min_replies:
            got = 0 if done is None else done["survivors"]
            raise TrainingError(f"round {rnd}: secure aggregation aborted with {got} usable replies from "
                                f"{len(self.nodes)} sites (it needs at least {self.min_replies} survivors "
                                f"to unmask); the global model was not updated")
        epsilon = accountant = None
        if self.dp is not None:
            n, t = self.s.sampled.get(rnd, len(self.nodes)), done["survivors"]
            z_eff = self.dp.noise_multiplier * math.sqrt(t / n)
            T.check_noise(T.DPConfig(clip_norm=self.dp.clip_norm, noise_multiplier=z_eff, delta=self.dp.delta,
                                     max_noise_ratio=self.dp.max_noise_ratio), t, self.dim)
            self.rho += gaussian_rho(z_eff)
            epsilon, accountant = epsilon_from_rho(self.rho, self.dp.delta), "zCDP, distributed noise (survivors)"
        arrays = self.s.arrays
        ckpt = T.save_checkpoint(arrays, self.out_dir / f"global_round_{rnd}.npz")
        record = T.numpy_to_record(arrays)
        content = lambda node: T._round_content(record, self.task, self.run_config, rnd, node)
        ev_ok, ev_failed = T._send(grid, self.nodes, content, T.MessageType.EVALUATE, self.timeout, f"evaluate-{rnd}")
        ev_ok, ev_refused = audit_replies(ev_ok, "evaluate", self.floor)
        _, eval_metrics = T._pooled_metrics(ev_ok)
        n_train, train_metrics = _weighted(done["metrics"])
        self.history.append(T.RoundRecord(round=rnd, replies=done["survivors"], failed=done["failed"] + ev_failed,
                                          num_examples=n_train, train_metrics=train_metrics,
                                          eval_replies=len(ev_ok), eval_metrics=eval_metrics,
                                          checkpoint=ckpt.name, epsilon=epsilon,
                                          seconds=time.perf_counter() - self.t0,
                                          refused=done["refused"] + ev_refused))
        self.t0 = time.perf_counter()
        best, chosen_by = T.choose_round(self.history)
        self.summary = T.TrainingSummary(task=self.task, rounds=self.history, nodes=sorted(self.nodes),
                                         final_checkpoint=ckpt.name, dp=self.dp, epsilon=epsilon,
                                         accountant=accountant, secure_aggregation=True,
                                         best_round=best, selection_metric=chosen_by)
        write_atomic(self.out_dir / "training_history.json", self.summary.model_dump_json(indent=2).encode())
        log.info("round %d (SecAgg+): %d survivors, eval %s", rnd, done["survivors"], eval_metrics)


def run_secagg_training(grid, task: str, *, rounds: int, run_config: dict, out_dir: Path, min_replies: int,
                        round_timeout: float, fedprox_mu: float = 0.0, dp: T.DPConfig | None = None,
                        node_wait: float = 0.0, resume: bool = False, secagg_range: float = 8.0,
                        context: Context | None = None, min_cell_floor: int = DEFAULT_FLOOR) -> T.TrainingSummary:
    """As :func:`coordinator.flower.training.run_federated_training`, with SecAgg+ fit rounds. A
    train reply that fails the coordinator's re-audit (:mod:`coordinator.flower.reply_audit`) has
    its clear metrics left out of the round's train metrics and is listed as refused; its masked
    update cannot be taken out of the secure sum (it carries no count the coordinator can read),
    and its weight is not used (the sum is unweighted)."""
    out_dir = Path(out_dir)
    nodes = T._connected(grid, None, min_replies, node_wait)
    if len(nodes) < min_replies:
        raise TrainingError(f"only {len(nodes)} site(s) connected, the quorum is {min_replies}")
    if len(nodes) < 2:
        raise TrainingError("secure aggregation needs at least 2 sites", hint="drop --secagg or add a site")
    threshold = secagg_threshold(len(nodes), min_replies)
    if threshold > len(nodes):
        raise TrainingError(f"secure aggregation with {len(nodes)} sites needs {threshold} survivors per round, "
                            f"more than are connected", hint="lower --min-replies or add sites")
    run_config = {**run_config, "fedprox_mu": float(fedprox_mu), RANGE: float(secagg_range)}
    if dp is not None:
        run_config.update({T.DP_NOISE: dp.noise_multiplier, T.DP_CLIP: dp.clip_norm, T.DP_DELTA: dp.delta})
    start, trainable = T.initial_weights(grid, task, run_config, nodes, round_timeout)
    prior = T._resume_state(out_dir, task) if resume else None
    history: list[T.RoundRecord] = []
    if prior is not None:
        history, loaded = prior
        if set(loaded) != set(start):
            raise TrainingError(f"cannot resume: the checkpoint in {out_dir} does not fit the sites' {task} model")
        start = {k: loaded[k] for k in start}
    first = len(history) + 1
    if first > rounds:
        raise TrainingError(f"nothing to resume: {out_dir} already holds {len(history)} of {rounds} rounds",
                            hint="raise --rounds")
    dim = sum(int(start[k].size) for k in (trainable or T.default_trainable(start)))
    if dp is not None:
        T.check_noise(T.DPConfig(clip_norm=dp.clip_norm, delta=dp.delta, max_noise_ratio=dp.max_noise_ratio,
                                 noise_multiplier=dp.noise_multiplier * math.sqrt(threshold / len(nodes))),
                      threshold, dim)
    strategy = UpdateStrategy(start, task, run_config, offset=first - 1, min_cell_floor=min_cell_floor)
    evaluation = PooledEvaluation(strategy, task=task, run_config=run_config, out_dir=out_dir, history=history,
                                  nodes=nodes, timeout=round_timeout, dp=dp, dim=dim, min_replies=threshold,
                                  min_cell_floor=min_cell_floor)
    if dp is not None:
        evaluation.rho = sum(gaussian_rho(dp.noise_multiplier * math.sqrt(r.replies / len(nodes))) for r in history)
    base = context or Context(run_id=int(getattr(grid.run, "run_id", 0)), node_id=0, node_config={},
                              state=RecordDict(), run_config={})
    legacy = LegacyContext(base, config=ServerConfig(num_rounds=rounds - first + 1), strategy=strategy,
                           client_manager=SimpleClientManager())
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlus(num_shares=1.0, reconstruction_threshold=threshold, max_weight=1.0,
                                        clipping_range=float(secagg_range), timeout=round_timeout),
        evaluate_workflow=evaluation)
    workflow(grid, legacy)
    if evaluation.summary is None:
        raise TrainingError("secure aggregation ran no round")
    # the client-manager thread of DefaultWorkflow stops itself; the final parameters are the strategy's
    assert legacy.state.array_records[MAIN_PARAMS_RECORD] is not None
    return evaluation.summary
