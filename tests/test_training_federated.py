"""Federated rounds through Flower's own ClientApp/Message classes (in-process grid): the site
handlers, FedAvg against a hand computation, quorum, a dead site, checkpoints, central DP."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.clientapp import ClientApp
from torch import nn

from coordinator.flower.training import (
    DPConfig,
    TrainingError,
    dp_aggregate,
    fedavg,
    gaussian_epsilon,
    load_checkpoint,
    run_federated_training,
)
from site_agent.training.federated import handle_evaluate, handle_train, register_task
from tests.flower_inprocess import InProcessGrid


class ToyTask:
    """Each site's data folder holds value.txt (c) and n.txt (examples): local training sets every
    float weight to c, so FedAvg's answer is known in closed form."""

    def init_model(self, run_config):
        return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))

    def local_train(self, model, site_data_dir: Path, run_config, global_model):
        c = float((site_data_dir / "value.txt").read_text())
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), global_model.state_dict().values()))
        with torch.no_grad():
            for v in model.state_dict().values():
                v.fill_(c) if v.is_floating_point() else v.fill_(int(c))
        return int((site_data_dir / "n.txt").read_text()), {"train_loss": c, "note": "strings are dropped"}

    def local_evaluate(self, model, site_data_dir: Path, run_config):
        n = int((site_data_dir / "n.txt").read_text())
        return n, {"accuracy": float((site_data_dir / "value.txt").read_text()) / 10}


register_task("toy", ToyTask())


def _app():
    app = ClientApp()
    app.train()(handle_train)
    app.evaluate()(handle_evaluate)
    return app


def _sites(tmp_path, spec):
    configs = {}
    for node, (c, n) in spec.items():
        d = tmp_path / f"site{node}"
        d.mkdir()
        (d / "value.txt").write_text(str(c))
        (d / "n.txt").write_text(str(n))
        configs[node] = {"image-root-toy": str(d)}
    return configs


def test_fedavg_rounds_match_the_weighted_mean(tmp_path):
    grid = InProcessGrid(_app(), _sites(tmp_path, {1: (1.0, 10), 2: (4.0, 30)}))
    summary = run_federated_training(grid, "toy", rounds=2, run_config={"seed": 3}, out_dir=tmp_path / "out",
                                     min_replies=2, round_timeout=30)
    expected = (1.0 * 10 + 4.0 * 30) / 40
    ck = load_checkpoint(tmp_path / "out" / "global_round_2.npz")
    assert set(ck) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                       "1.num_batches_tracked"}
    assert np.allclose(ck["0.weight"], expected) and ck["1.num_batches_tracked"].dtype == np.int64
    hist = json.loads((tmp_path / "out" / "training_history.json").read_text())
    assert [r["replies"] for r in hist["rounds"]] == [2, 2]
    assert hist["rounds"][0]["eval_metrics"]["accuracy"] == pytest.approx((0.1 * 10 + 0.4 * 30) / 40)
    assert hist["rounds"][0]["train_metrics"] == {"train_loss": pytest.approx(expected)}
    assert summary.final_checkpoint == "global_round_2.npz"
    # the starting model came from a site: one init message, no arrays in it
    init = [m for m in grid.sent if m.metadata.group_id == "init"]
    assert len(init) == 1 and not init[0].content.array_records


def test_dead_site_does_not_hang_a_round_and_quorum_is_enforced(tmp_path):
    spec = {1: (1.0, 10), 2: (2.0, 10), 3: (3.0, 10)}
    grid = InProcessGrid(_app(), _sites(tmp_path, spec), dead=[3])
    t0 = time.monotonic()
    summary = run_federated_training(grid, "toy", rounds=1, run_config={}, out_dir=tmp_path / "a", min_replies=2,
                                     round_timeout=1.0)
    assert time.monotonic() - t0 < 10
    assert summary.rounds[0].replies == 2 and any("node 3" in f for f in summary.rounds[0].failed)
    assert np.allclose(load_checkpoint(tmp_path / "a" / "global_round_1.npz")["0.weight"], 1.5)
    (tmp_path / "b").mkdir()
    grid = InProcessGrid(_app(), _sites(tmp_path / "b", spec), dead=[3])
    with pytest.raises(TrainingError, match="quorum is 3"):
        run_federated_training(grid, "toy", rounds=1, run_config={}, out_dir=tmp_path / "b" / "out", min_replies=3,
                               round_timeout=0.5)
    assert not (tmp_path / "b" / "out" / "global_round_1.npz").exists()


def test_a_crashing_site_counts_as_failed(tmp_path):
    configs = _sites(tmp_path, {1: (1.0, 10), 2: (2.0, 10)})
    configs[2] = {"image-root-toy": str(tmp_path / "missing")}
    grid = InProcessGrid(_app(), configs)
    summary = run_federated_training(grid, "toy", rounds=1, run_config={}, out_dir=tmp_path / "o", min_replies=1,
                                     round_timeout=10)
    assert summary.rounds[0].replies == 1 and "data folder not found" in summary.rounds[0].failed[0]


def test_fedavg_function_against_hand_computation():
    a = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(4)}
    b = {"w": np.array([3.0, 6.0], np.float32), "n": np.array(9)}
    out = fedavg([(a, 1), (b, 3)])
    assert np.allclose(out["w"], [2.5, 5.0]) and out["w"].dtype == np.float32
    assert out["n"] == 8  # round(0.25*4 + 0.75*9) = round(7.75)


def test_dp_clips_each_update_and_reports_epsilon():
    g = {"w": np.zeros(4), "k": np.array(0)}
    far = {"w": np.array([30.0, 40.0, 0, 0]), "k": np.array(2)}  # update norm 50
    near = {"w": np.array([0.3, 0.4, 0, 0]), "k": np.array(2)}  # norm 0.5: not clipped
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1e-9)
    out = dp_aggregate(g, [far, near], dp, np.random.default_rng(0))
    assert np.allclose(out["w"], [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2, 0, 0], atol=1e-6)
    noisy = dp_aggregate(g, [near, near], DPConfig(clip_norm=1.0, noise_multiplier=2.0), np.random.default_rng(0))
    draws = np.concatenate([dp_aggregate(g, [near, near], DPConfig(clip_norm=1.0, noise_multiplier=2.0),
                                         np.random.default_rng(s))["w"] - [0.3, 0.4, 0, 0] for s in range(400)])
    assert np.std(draws) == pytest.approx(2.0 * 1.0 / 2, rel=0.08)  # std = z * C / n
    assert noisy["k"] == 2
    # epsilon: closed form equals the numeric optimum of the RDP conversion over orders
    for sigma, rounds, delta in [(1.0, 5, 1e-5), (4.0, 50, 1e-6)]:
        orders = np.linspace(1.001, 2000, 2_000_000)
        numeric = np.min(rounds * orders / (2 * sigma**2) + math.log(1 / delta) / (orders - 1))
        assert gaussian_epsilon(sigma, rounds, delta) == pytest.approx(numeric, rel=1e-4)


def test_dp_run_reports_epsilon_per_round(tmp_path):
    grid = InProcessGrid(_app(), _sites(tmp_path, {1: (1.0, 10), 2: (1.0, 10)}))
    s = run_federated_training(grid, "toy", rounds=2, run_config={}, out_dir=tmp_path / "o", min_replies=2,
                               round_timeout=10, dp=DPConfig(clip_norm=0.5, noise_multiplier=1.0))
    eps = [r.epsilon for r in s.rounds]
    assert eps[0] < eps[1] and s.epsilon == eps[1] and s.accountant
    assert eps[1] <= gaussian_epsilon(1.0, 2, 1e-5) + 1e-9


def test_training_job_document_and_too_few_sites(tmp_path):
    from coordinator.flower.training import TrainRequest, run_training_job

    grid = InProcessGrid(_app(), _sites(tmp_path, {1: (2.0, 5), 2: (4.0, 15)}))
    job = TrainRequest(task="toy", rounds=1, min_replies=2, round_timeout=10, node_wait=0, out=tmp_path / "job")
    doc = run_training_job(grid, json.loads(job.model_dump_json()))
    assert doc["ok"] and doc["summary"]["rounds"][0]["replies"] == 2 and doc["summary"]["nodes"] == [1, 2]
    assert np.allclose(load_checkpoint(tmp_path / "job" / "global_round_1.npz")["0.bias"], 3.5)
    with pytest.raises(TrainingError, match="bad training job rounds"):
        run_training_job(grid, {**json.loads(job.model_dump_json()), "rounds": 0})
    t0 = time.monotonic()
    with pytest.raises(TrainingError, match="only 2 site"):
        run_federated_training(grid, "toy", rounds=1, run_config={}, out_dir=tmp_path / "x", min_replies=3,
                               round_timeout=1, node_wait=1.5)
    assert 1.4 < time.monotonic() - t0 < 10
