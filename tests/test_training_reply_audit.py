"""The coordinator's re-audit of model replies (coordinator.flower.reply_audit), fast, no network.

Sites state their minimum cell count and FedAvg weight base in every reply; the coordinator runs
the same declared-relation audit (check_release) on evaluation replies with that minimum, checks
the training weight is a multiple of the base, and refuses sites under the network's floor. A
tampered site (an exact weight, a small cell un-withheld) is refused and the round completes
without it: the global model and the pooled metrics are those of the honest sites, by hand and
by scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord
from flwr.clientapp import ClientApp
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from torch import nn

from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.reply_audit import audit_evaluation, audit_train
from coordinator.flower.secagg import run_secagg_training
from coordinator.flower.training import (
    TrainRequest,
    load_checkpoint,
    run_federated_training,
)
from optima_common.disclosure.model_replies import POLICY_MIN_CELL, POLICY_WEIGHT_BASE
from site_agent.training.federated import (
    evaluate_reply_metrics,
    handle_evaluate,
    register_task,
    train_reply_metrics,
)
from site_agent.training.secagg import handle_train_any, secagg_when_asked

MIN = 5
SIZES = {1: 23, 2: 47, 3: 36}  # exact training-set sizes; released: 20, 50, 40 (base 10)
VALUE = {1: 1.0, 2: -2.0, 3: 10.0}  # each site's "training" sets every weight to its value
CELLS = {1: [[20, 6], [7, 17]], 2: [[30, 5], [8, 9]], 3: [[20, 2], [3, 15]]}  # site 3 has small cells


def _cm_metrics(cells) -> dict:
    return {f"cm_{i}_{j}": float(cells[i][j]) for i in range(2) for j in range(2)}


class AuditToy:
    def init_model(self, run_config):
        torch.manual_seed(0)
        return nn.Linear(3, 2)

    def local_train(self, model, site_data_dir: Path, run_config, global_model):
        node = int(site_data_dir.name[1:])
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(VALUE[node])
        return SIZES[node], {"train_loss": float(node)}

    def local_evaluate(self, model, site_data_dir: Path, run_config):
        node = int(site_data_dir.name[1:])
        return int(np.sum(CELLS[node])), _cm_metrics(CELLS[node])


register_task("audittoy", AuditToy())


def tamper(msg, ctxt, call_next):
    """A dishonest site's mod: its train reply carries the exact training-set size, its evaluate
    reply the raw confusion matrix (small cells un-withheld), whatever its own audit said."""
    rep = call_next(msg, ctxt)
    if not ctxt.node_config.get("tamper") or rep.has_error():
        return rep
    node = ctxt.node_id
    records = {**rep.content.metric_records, **{k: v for k, v in rep.content.config_records.items()
                                                if k == "fitres.metrics"}}  # SecAgg+: legacy FitRes metrics
    for name, rec in records.items():
        m = dict(rec)
        if "num-examples" not in m:
            continue
        if msg.metadata.message_type == "train" and m["num-examples"] > 0:
            m["num-examples"] = SIZES[node]
        elif msg.metadata.message_type == "evaluate":
            m = {k: v for k, v in m.items() if "withheld" not in k} | _cm_metrics(CELLS[node])
        rep.content[name] = ConfigRecord(m) if name == "fitres.metrics" else MetricRecord(m)
    return rep


def _app():
    app = ClientApp(mods=[tamper])
    app.train(mods=[secagg_when_asked])(handle_train_any)
    app.evaluate()(handle_evaluate)
    return app


def _grid(tmp_path, tampered=(3,), extra=None):
    configs = {}
    for node in SIZES:
        d = tmp_path / f"s{node}"
        d.mkdir(parents=True)
        configs[node] = {"image-root-audittoy": str(d), "min-cell-count": MIN, "tamper": node in tampered,
                         **(extra or {}).get(node, {})}
    return InProcessGrid(_app(), configs)


def test_train_reply_audit_by_hand():
    honest = dict(train_reply_metrics(23, {"train_loss": 0.1}, {"min-cell-count": MIN}))
    assert honest["num-examples"] == 20 and honest[POLICY_MIN_CELL] == 5 and honest[POLICY_WEIGHT_BASE] == 10
    assert audit_train(honest, 5) is None
    assert "not a multiple of its base 10" in audit_train({**honest, "num-examples": 23}, 5)
    assert "not a multiple" in audit_train({**honest, "num-examples": 20.5}, 5)
    assert "base 3 is below its minimum cell count 5" in audit_train({**honest, POLICY_WEIGHT_BASE: 3}, 5)
    assert "states no minimum cell count" in audit_train({"num-examples": 20, POLICY_WEIGHT_BASE: 10}, 5)
    low = dict(train_reply_metrics(23, {}, {"min-cell-count": 3, "fedavg-weight-base": 3}))
    assert low["num-examples"] == 24 and "minimum cell count 3 is below the network's floor 5" in audit_train(low, 5)
    assert audit_train(low, 3) is None


def test_evaluation_reply_audit_by_hand():
    honest = dict(evaluate_reply_metrics(40, _cm_metrics(CELLS[3]), {"min-cell-count": MIN}))
    assert honest.get("cm_withheld") == 1.0 and "cm_0_1" not in honest  # the site withheld its small cells
    assert audit_evaluation(honest, 5) is None
    big = dict(evaluate_reply_metrics(50, _cm_metrics(CELLS[1]), {"min-cell-count": MIN}))
    assert big["cm_0_1"] == 6 and audit_evaluation(big, 5) is None
    tampered = {k: v for k, v in honest.items() if "withheld" not in k} | _cm_metrics(CELLS[3])
    why = audit_evaluation(tampered, 5)
    assert why and "between 1 and 4" in why, why
    # lying about the minimum to slip the cells through is caught by the network's floor
    assert "below the network's floor 5" in audit_evaluation({**tampered, POLICY_MIN_CELL: 2}, 5)
    # a metric of the withheld matrix, released anyway
    assert "withheld matrix" in audit_evaluation({**honest, "accuracy": 0.875}, 5)
    assert "states no minimum" in audit_evaluation({k: v for k, v in honest.items() if k != POLICY_MIN_CELL}, 5)


def test_tampered_site_is_refused_and_the_round_completes_without_it(tmp_path):
    grid = _grid(tmp_path)
    s = run_federated_training(grid, "audittoy", rounds=1, run_config={}, out_dir=tmp_path / "o", min_replies=2,
                               round_timeout=30)
    rnd = s.rounds[0]
    assert rnd.replies == 2 and rnd.eval_replies == 2 and rnd.failed == []
    assert len(rnd.refused) == 2 and all(r.startswith("node 3: refused at the coordinator") for r in rnd.refused)
    assert "not a multiple of its base 10" in rnd.refused[0] and "between 1 and 4" in rnd.refused[1]
    # FedAvg of the honest sites with their released weights 20 and 50 (site 3's 10.0 nowhere)
    want = (20 * VALUE[1] + 50 * VALUE[2]) / 70
    for v in load_checkpoint(tmp_path / "o" / s.final_checkpoint).values():
        np.testing.assert_allclose(v, want, rtol=1e-6)
    assert rnd.num_examples == 70 and rnd.train_metrics["train_loss"] == pytest.approx((20 * 1 + 50 * 2) / 70)
    # pooled evaluation: sites 1 and 2 only, against scikit-learn on the pooled labels
    y, p = [], []
    for node in (1, 2):
        for i in range(2):
            for j in range(2):
                y += [i] * CELLS[node][i][j]
                p += [j] * CELLS[node][i][j]
    prec, rec, f1, _ = precision_recall_fscore_support(y, p, average="macro", zero_division=0)
    ev = rnd.eval_metrics
    assert ev["cm_sites"] == 2 and ev["cm_0_1"] == 11 and "cm_withheld_sites" not in ev
    assert ev["accuracy"] == pytest.approx(accuracy_score(y, p)) and ev["f1"] == pytest.approx(f1)
    assert ev["precision"] == pytest.approx(prec) and ev["recall"] == pytest.approx(rec)
    assert not any(k.startswith("policy-") for k in {**ev, **rnd.train_metrics})


def test_honest_sites_pass_and_a_site_under_the_floor_is_refused(tmp_path):
    s = run_federated_training(_grid(tmp_path / "a", tampered=()), "audittoy", rounds=1, run_config={},
                               out_dir=tmp_path / "a" / "o", min_replies=3, round_timeout=30)
    assert s.rounds[0].refused == [] and s.rounds[0].replies == 3 and s.rounds[0].eval_replies == 3
    assert s.rounds[0].eval_metrics["cm_withheld_sites"] == 1  # site 3 withheld honestly: counted, not refused
    low = {3: {"min-cell-count": 3, "fedavg-weight-base": 10}}
    s = run_federated_training(_grid(tmp_path / "b", tampered=(), extra=low), "audittoy", rounds=1, run_config={},
                               out_dir=tmp_path / "b" / "o", min_replies=2, round_timeout=30, min_cell_floor=5)
    assert s.rounds[0].replies == 2 and len(s.rounds[0].refused) == 2
    assert all("below the network's floor 5" in r for r in s.rounds[0].refused)
    assert TrainRequest(task="pathology", out="x").min_cell_floor == 5
    with pytest.raises(ValueError):
        TrainRequest(task="pathology", out="x", min_cell_floor=1)


def test_secagg_round_refuses_a_tampered_sites_clear_replies(tmp_path):
    """Under SecAgg+ the masked update is already in the sum (it carries no readable count and is
    summed unweighted); the tampered site's clear train metrics and its evaluation are not pooled."""
    s = run_secagg_training(_grid(tmp_path), "audittoy", rounds=1, run_config={}, out_dir=tmp_path / "o",
                            min_replies=2, round_timeout=30, secagg_range=32.0)
    rnd = s.rounds[0]
    assert rnd.replies == 3 and rnd.eval_replies == 2 and len(rnd.refused) == 2
    assert "train metrics not pooled" in rnd.refused[0] and "not a multiple" in rnd.refused[0]
    assert "between 1 and 4" in rnd.refused[1]
    assert rnd.num_examples == 70 and rnd.train_metrics["train_loss"] == pytest.approx((20 * 1 + 50 * 2) / 70)
    assert rnd.eval_metrics["cm_sites"] == 2 and rnd.eval_metrics["cm_0_1"] == 11
    start = AuditToy().init_model({}).state_dict()  # the unweighted mean update of all three sites
    for k, v in load_checkpoint(tmp_path / "o" / s.final_checkpoint).items():
        np.testing.assert_allclose(v, start[k].numpy() + np.mean([VALUE[n] - start[k].numpy() for n in VALUE], 0),
                                   atol=1e-4)


def test_cli_min_cell_floor_reaches_the_request_and_refusals_are_summarised(tmp_path):
    """``coordinator train --min-cell-floor N`` sets the request's floor (default: the network's 5;
    below 2 is a one-line option error), and the closing line counts the refused replies."""
    from coordinator.cli.main import build_parser
    from coordinator.cli.training import describe, request_from_args
    from coordinator.flower.training import RoundRecord, TrainingSummary
    from optima_common.errors import TrainingError

    parse = build_parser().parse_args
    assert request_from_args(parse(["train", "pathology", "--out", str(tmp_path)])).min_cell_floor == 5
    assert request_from_args(parse(["train", "pathology", "--out", str(tmp_path),
                                    "--min-cell-floor", "11"])).min_cell_floor == 11
    with pytest.raises(TrainingError, match="min_cell_floor"):
        request_from_args(parse(["train", "pathology", "--out", str(tmp_path), "--min-cell-floor", "1"]))

    def record(r, refused):
        return RoundRecord(round=r, replies=2, failed=[], num_examples=20, train_metrics={}, eval_replies=2,
                           eval_metrics={"accuracy": 0.5}, checkpoint=f"global_round_{r}.npz", seconds=1.0,
                           refused=refused)

    summary = TrainingSummary(task="pathology", nodes=[1, 2, 3], final_checkpoint="global_round_2.npz",
                              rounds=[record(1, ["node 3: refused at the coordinator: x"]),
                                      record(2, ["node 3: refused at the coordinator: y",
                                                 "node 2: refused at the coordinator: z"])])
    assert "3 replies refused at the coordinator" in describe(summary, tmp_path)
    summary.rounds = [record(1, [])]
    assert "refused" not in describe(summary, tmp_path)
