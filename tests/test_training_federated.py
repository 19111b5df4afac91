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

from coordinator.flower.inprocess import InProcessGrid
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


def test_dp_noise_and_clipping_touch_trainable_weights_only():
    g = {"w": np.zeros(3), "bn.running_mean": np.zeros(2), "bn.running_var": np.ones(2), "c": np.full(2, 5.0)}
    a = {"w": np.array([3.0, 4.0, 0]), "bn.running_mean": np.array([1.0, 2.0]),
         "bn.running_var": np.array([2.0, 5.0]), "c": np.full(2, 5.0)}
    b = {**a, "bn.running_mean": np.array([3.0, 0.0]), "bn.running_var": np.array([10.0, 1.0])}
    dp = DPConfig(clip_norm=1.0, noise_multiplier=50.0)
    out = dp_aggregate(g, [a, b], dp, np.random.default_rng(1), trainable=["w"])
    assert np.allclose(out["bn.running_mean"], [2.0, 1.0]) and np.allclose(out["bn.running_var"], [6.0, 3.0])
    assert np.allclose(out["c"], 5.0)  # constant buffers untouched
    assert np.abs(out["w"] - [0.6, 0.8, 0]).max() > 1.0  # the weights did get (large) noise
    # without the site's list, BatchNorm buffers are still recognised by name
    out = dp_aggregate(g, [a, b], dp, np.random.default_rng(1))
    assert np.allclose(out["bn.running_var"], [6.0, 3.0])


def _numbers(doc):
    if isinstance(doc, bool):
        return []
    if isinstance(doc, (int, float)):
        return [doc]
    if isinstance(doc, dict):
        return [x for v in doc.values() for x in _numbers(v)]
    if isinstance(doc, list):
        return [x for v in doc for x in _numbers(v)]
    return []


def _dp_noise(tmp_path, name, seed):
    """One DP round of two sites that both set every weight to 1.0 (clip 100: nothing is clipped),
    so the checkpoint minus 1.0 is exactly the noise; also the run's history."""
    grid = InProcessGrid(_app(), _sites(tmp_path / name, {1: (1.0, 10), 2: (1.0, 10)}))
    dp = DPConfig(clip_norm=100.0, noise_multiplier=0.01, max_noise_ratio=10.0)
    run_federated_training(grid, "toy", rounds=1, run_config={"seed": seed}, out_dir=tmp_path / name / "o",
                           min_replies=2, round_timeout=10, dp=dp)
    ck = load_checkpoint(tmp_path / name / "o" / "global_round_1.npz")
    history = json.loads((tmp_path / name / "o" / "training_history.json").read_text())
    return ck["0.weight"].astype(np.float64) - 1.0, history, 0.01 * 100.0 / 2


def _regenerable(noise, history, std) -> list:
    """Every logged number (and small integers) tried as a numpy seed: which regenerate the noise?"""
    candidates = {int(abs(v)) for v in _numbers(history) if abs(v) < 2**63} | set(range(16))
    return [c for c in candidates
            if np.allclose(np.random.default_rng(c).normal(0.0, std, size=noise.shape), noise, atol=1e-4)]


def test_dp_noise_is_not_reproducible_from_anything_logged(tmp_path, monkeypatch):
    from coordinator.flower import training

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    noise_a, hist_a, std = _dp_noise(tmp_path, "a", seed=0)
    noise_b, _, _ = _dp_noise(tmp_path, "b", seed=0)
    assert np.abs(noise_a).max() > 10 * 1e-6 and np.std(noise_a) == pytest.approx(std, rel=0.9)
    assert not np.allclose(noise_a, noise_b, atol=1e-6)  # same seed, same config: different noise
    assert "seed" not in hist_a["dp"]  # the DP settings carry no seed at all
    assert _regenerable(noise_a, hist_a, std) == []
    # the check has teeth: the old generator (seeded with the public seed) is caught by it
    monkeypatch.setattr(training, "noise_rng", lambda: np.random.default_rng(0))
    noise_c, hist_c, _ = _dp_noise(tmp_path, "c", seed=0)
    assert _regenerable(noise_c, hist_c, std) == [0]


def test_dp_refuses_noise_that_swamps_the_update(tmp_path):
    grid = InProcessGrid(_app(), _sites(tmp_path, {1: (1.0, 10), 2: (1.0, 10)}))
    with pytest.raises(TrainingError, match=r"swamp the update.*2 site\(s\).*12 trainable weights.*needs 4 sites"):
        run_federated_training(grid, "toy", rounds=1, run_config={}, out_dir=tmp_path / "o", min_replies=2,
                               round_timeout=10, dp=DPConfig(clip_norm=0.5, noise_multiplier=1.0))
    assert not (tmp_path / "o" / "global_round_1.npz").exists()


def test_dp_run_reports_epsilon_per_round(tmp_path):
    grid = InProcessGrid(_app(), _sites(tmp_path, {1: (1.0, 10), 2: (1.0, 10)}))
    s = run_federated_training(grid, "toy", rounds=2, run_config={}, out_dir=tmp_path / "o", min_replies=2,
                               round_timeout=10, dp=DPConfig(clip_norm=0.5, noise_multiplier=1.0,
                                                             max_noise_ratio=2.0))
    eps = [r.epsilon for r in s.rounds]
    assert eps[0] < eps[1] and s.epsilon == eps[1] and s.accountant
    assert eps[1] <= gaussian_epsilon(1.0, 2, 1e-5) + 1e-9


class BnTask:
    """A real BatchNorm model trained a few steps on each site's Gaussian data (site-specific
    offsets, so the sites' BatchNorm statistics differ); evaluation in eval mode."""

    def init_model(self, run_config):
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

    def _data(self, site_data_dir):
        offset = float((site_data_dir / "value.txt").read_text())
        g = torch.Generator().manual_seed(int(offset * 10))
        y = torch.randint(0, 2, (64,), generator=g)
        x = torch.randn(64, 4, generator=g) * 3 + offset + y[:, None] * 2.0
        return x, y

    def local_train(self, model, site_data_dir, run_config, global_model):
        x, y = self._data(site_data_dir)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        model.train()
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return len(y), {}

    def local_evaluate(self, model, site_data_dir, run_config):
        x, y = self._data(site_data_dir)
        model.eval()
        with torch.no_grad():
            logits = model(x)
        bn = model[1]
        return len(y), {"loss": float(nn.functional.cross_entropy(logits, y)),
                        "accuracy": float((logits.argmax(1) == y).float().mean()),
                        "min_running_var": float(bn.running_var.min())}


register_task("bntoy", BnTask())


def test_dp_two_site_rounds_keep_batchnorm_valid(tmp_path):
    configs = {n: {"image-root-bntoy": c["image-root-toy"]}
               for n, c in _sites(tmp_path, {1: (-2.0, 64), 2: (3.0, 64)}).items()}
    grid = InProcessGrid(_app(), configs)
    # large noise (std 2.5 per weight) on the weights; the BatchNorm moments must come through clean
    dp = DPConfig(clip_norm=1.0, noise_multiplier=5.0, max_noise_ratio=100.0)
    s = run_federated_training(grid, "bntoy", rounds=2, run_config={}, out_dir=tmp_path / "o", min_replies=2,
                               round_timeout=30, dp=dp)
    for rnd in s.rounds:
        assert rnd.eval_replies == 2 and not rnd.failed
        assert math.isfinite(rnd.eval_metrics["loss"]) and 0 <= rnd.eval_metrics["accuracy"] <= 1
        assert rnd.eval_metrics["min_running_var"] >= 0
    ck = load_checkpoint(tmp_path / "o" / "global_round_2.npz")
    var = ck["1.running_var"] - ck["1.running_mean"] ** 2  # moments on the wire
    assert np.isfinite(ck["1.running_var"]).all() and (var >= -1e-5).all()
    assert np.abs(ck["0.weight"]).max() > 1.0  # the weights did carry the noise


def test_site_privacy_ledger_refuses_once_spent_across_runs(tmp_path):
    from optima_common.errors import PrivacyBudgetError
    from optima_common.privacy import epsilon_from_rho
    from site_agent.training.privacy import Ledger

    state = tmp_path / "state"
    configs = _sites(tmp_path, {1: (1.0, 10), 2: (1.0, 10)})
    for c in configs.values():
        c.update({"state-dir": str(state / c["image-root-toy"][-1]), "privacy-epsilon-budget": 8.0})
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.0, max_noise_ratio=10.0)
    eps1, eps2 = epsilon_from_rho(0.5, 1e-5), epsilon_from_rho(1.0, 1e-5)  # 5.30, 7.79: under 8
    assert eps2 < 8 < epsilon_from_rho(1.5, 1e-5)
    for run in (1, 2):  # two runs, one round each: the ledger persists between them
        s = run_federated_training(InProcessGrid(_app(), configs, run_id=run), "toy", rounds=1, run_config={},
                                   out_dir=tmp_path / f"run{run}", min_replies=2, round_timeout=10, dp=dp)
        assert s.rounds[0].train_metrics["site_epsilon_spent"] == pytest.approx(eps1 if run == 1 else eps2)
    ledger_file = state / "1" / "privacy_ledger.json"
    before = ledger_file.read_bytes()
    with pytest.raises(TrainingError, match="privacy budget spent: epsilon 7.79 of 8 used"):
        run_federated_training(InProcessGrid(_app(), configs, run_id=3), "toy", rounds=1, run_config={},
                               out_dir=tmp_path / "run3", min_replies=2, round_timeout=10, dp=dp)
    assert ledger_file.read_bytes() == before  # a refused round is not recorded
    doc = json.loads(before)
    assert [e["run_id"] for e in doc["entries"]] == [1, 2] and doc["epsilon_spent"] == pytest.approx(eps2)
    # a site with a budget refuses a round without DP; the refusal is one line
    with pytest.raises(TrainingError, match="without differential privacy"):
        run_federated_training(InProcessGrid(_app(), configs), "toy", rounds=1, run_config={},
                               out_dir=tmp_path / "run4", min_replies=2, round_timeout=10)
    with pytest.raises(PrivacyBudgetError) as err:
        Ledger(ledger_file, 8.0, 1e-5).charge(noise_multiplier=1.0, run_id=9, round=1, task="toy")
    assert "\n" not in str(err.value) and err.value.exit_code == 26


def test_resume_continues_at_the_next_round(tmp_path):
    configs = _sites(tmp_path, {1: (1.0, 10), 2: (4.0, 30)})
    run_federated_training(InProcessGrid(_app(), configs), "toy", rounds=2, run_config={}, out_dir=tmp_path / "o",
                           min_replies=2, round_timeout=10)
    ck2 = load_checkpoint(tmp_path / "o" / "global_round_2.npz")
    ck2["0.bias"] = ck2["0.bias"] + 7.0  # mark the checkpoint: round 3 must start from it
    from coordinator.flower.training import save_checkpoint

    save_checkpoint(ck2, tmp_path / "o" / "global_round_2.npz")
    grid = InProcessGrid(_app(), configs)
    s = run_federated_training(grid, "toy", rounds=3, run_config={}, out_dir=tmp_path / "o", min_replies=2,
                               round_timeout=10, resume=True)
    assert [r.round for r in s.rounds] == [1, 2, 3] and s.final_checkpoint == "global_round_3.npz"
    groups = sorted({m.metadata.group_id for m in grid.sent})
    assert groups == ["evaluate-3", "init", "train-3"]
    sent = next(m for m in grid.sent if m.metadata.group_id == "train-3").content.array_records["arrays"]
    assert np.allclose(sent["0.bias"].numpy(), ck2["0.bias"])
    with pytest.raises(TrainingError, match="already holds 3 of 3 rounds"):
        run_federated_training(InProcessGrid(_app(), configs), "toy", rounds=3, run_config={},
                               out_dir=tmp_path / "o", min_replies=2, round_timeout=10, resume=True)


def test_training_job_document_and_too_few_sites(tmp_path):
    from coordinator.flower.train_job import run_training_job
    from coordinator.flower.training import TrainRequest

    grid = InProcessGrid(_app(), _sites(tmp_path, {1: (2.0, 5), 2: (4.0, 15)}))
    job = TrainRequest(task="toy", rounds=1, min_replies=2, round_timeout=10, node_wait=0, out=tmp_path / "job")
    doc = run_training_job(grid, json.loads(job.model_dump_json()))
    assert doc["ok"] and doc["summary"]["rounds"][0]["replies"] == 2 and doc["summary"]["nodes"] == [1, 2]
    # FedAvg weights are the released sizes (5 -> 10, 15 -> 20 at the default base 10), not 5 and 15
    assert np.allclose(load_checkpoint(tmp_path / "job" / "global_round_1.npz")["0.bias"], (2 * 10 + 4 * 20) / 30)
    with pytest.raises(TrainingError, match="bad training job rounds"):
        run_training_job(grid, {**json.loads(job.model_dump_json()), "rounds": 0})
    t0 = time.monotonic()
    with pytest.raises(TrainingError, match="only 2 site"):
        run_federated_training(grid, "toy", rounds=1, run_config={}, out_dir=tmp_path / "x", min_replies=3,
                               round_timeout=1, node_wait=1.5)
    assert 1.4 < time.monotonic() - t0 < 10
