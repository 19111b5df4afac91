"""SecAgg+ training rounds through Flower's own SecAggPlusWorkflow and secaggplus_mod (in-process
grid; the real network is tests/e2e/test_training_network.py): the unmasked result against the
mean computed by hand, a site dropping out after the key exchange (completes or aborts as
configured), nothing readable of one site's update in its replies, distributed DP noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.clientapp import ClientApp
from torch import nn

from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.secagg import (
    dropout_lines,
    run_secagg_training,
    secagg_threshold,
)
from coordinator.flower.training import DPConfig, TrainingError, load_checkpoint
from site_agent.training.federated import handle_evaluate, register_task
from site_agent.training.secagg import handle_train_any, secagg_when_asked


class SetTask:
    """Local training sets every float weight of a Linear(in, out) to the site's value c."""

    def __init__(self, n_in=3, n_out=2):
        self.shape = (n_in, n_out)

    def init_model(self, run_config):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(*self.shape), nn.BatchNorm1d(self.shape[1]))

    def local_train(self, model, site_data_dir: Path, run_config, global_model):
        c = float((site_data_dir / "value.txt").read_text())
        with torch.no_grad():
            for name, v in model.state_dict().items():
                if v.is_floating_point() and not name.endswith("running_var"):
                    v.fill_(c)
        return 10, {"train_loss": c}

    def local_evaluate(self, model, site_data_dir: Path, run_config):
        return 5, {"accuracy": float((site_data_dir / "value.txt").read_text()) / 10}


register_task("sa_toy", SetTask())
register_task("sa_wide", SetTask(100, 50))


def _app():
    app = ClientApp()
    app.train(mods=[secagg_when_asked])(handle_train_any)
    app.evaluate()(handle_evaluate)
    return app


def _sites(tmp_path, task, values, extra=None):
    configs = {}
    for node, c in values.items():
        d = tmp_path / f"site{node}"
        d.mkdir(parents=True)
        (d / "value.txt").write_text(str(c))
        configs[node] = {f"image-root-{task}": str(d), **(extra or {}).get(node, {})}
    return configs


def test_threshold_is_a_strict_majority_and_at_least_the_quorum():
    assert [secagg_threshold(n, 2) for n in (2, 3, 4, 5, 7)] == [2, 2, 3, 3, 4]
    assert secagg_threshold(3, 3) == 3


def test_secagg_round_unmasks_the_mean_update_and_hides_each_site(tmp_path):
    grid = InProcessGrid(_app(), _sites(tmp_path, "sa_toy", {1: 1.0, 2: 2.0, 3: -1.5}))
    start = SetTask().init_model({}).state_dict()
    s = run_secagg_training(grid, "sa_toy", rounds=2, run_config={}, out_dir=tmp_path / "out", min_replies=2,
                            round_timeout=30)
    assert s.secure_aggregation and [r.replies for r in s.rounds] == [3, 3]
    ck1 = load_checkpoint(tmp_path / "out" / "global_round_1.npz")
    # every site sets the weights to c: the mean update lands on mean(c) = 0.5; quantization step 16/2^22
    assert np.allclose(ck1["0.weight"], 0.5, atol=1e-4) and np.allclose(ck1["1.running_mean"], 0.5, atol=1e-4)
    assert not np.allclose(start["0.weight"].numpy(), 0.5, atol=1e-2)  # it did move
    # running_var travels as E[x^2] = var + mean^2: 1 + 0 at the start, 1 + c^2 at each site
    assert np.allclose(ck1["1.running_var"], 1 + (1 + 4 + 2.25) / 3, atol=1e-4)
    assert ck1["1.num_batches_tracked"].dtype == np.int64
    assert s.rounds[0].eval_metrics["accuracy"] == pytest.approx((0.1 + 0.2 - 0.15) / 3)
    assert s.rounds[0].train_metrics["train_loss"] == pytest.approx(0.5)
    # SecAgg+ messages were sent (four stages per round), and no site's plain update reached the coordinator
    stages = [m for m in grid.sent if "secaggplus_configs" in m.content.config_records]
    assert len(stages) == 2 * 4 * 3
    for rep in grid.received:
        for name, rec in rep.content.array_records.items():
            assert len(rec) == 0 or name == "arrays", name  # fit replies: arrays cleared by the mod
        if "secaggplus_configs" in rep.content.config_records:
            masked = rep.content.config_records["secaggplus_configs"].get("masked_parameters")
            if masked:
                from flwr.common import bytes_to_ndarray

                vec = np.concatenate([bytes_to_ndarray(b).ravel() for b in masked]).astype(np.float64)
                assert vec.max() > 2**20  # uniform masks mod 2^32, not the quantized update


def test_a_site_dropping_out_mid_round_completes_or_aborts_as_configured(tmp_path):
    # site 3 has a privacy budget, so it refuses a round without DP: it fails in SecAgg+ stage 2,
    # after the key exchange, and its pairwise masks must be removed with its neighbours' shares
    budget = {3: {"state-dir": str(tmp_path / "state3"), "privacy-epsilon-budget": 1.0}}
    configs = _sites(tmp_path / "a", "sa_toy", {1: 1.0, 2: 2.0, 3: 100.0}, budget)
    s = run_secagg_training(InProcessGrid(_app(), configs), "sa_toy", rounds=1, run_config={},
                            out_dir=tmp_path / "a" / "out", min_replies=2, round_timeout=30)
    assert s.rounds[0].replies == 2 and "without differential privacy" in " ".join(s.rounds[0].failed)
    ck = load_checkpoint(tmp_path / "a" / "out" / "global_round_1.npz")
    assert np.allclose(ck["0.weight"], 1.5, atol=1e-4)  # mean of the two survivors only
    # the same dropout with a quorum of 3: the round aborts and nothing is checkpointed
    configs = _sites(tmp_path / "b", "sa_toy", {1: 1.0, 2: 2.0, 3: 100.0}, budget)
    with pytest.raises(TrainingError, match="secure aggregation aborted"):
        run_secagg_training(InProcessGrid(_app(), configs), "sa_toy", rounds=1, run_config={},
                            out_dir=tmp_path / "b" / "out", min_replies=3, round_timeout=30)
    assert not (tmp_path / "b" / "out" / "global_round_1.npz").exists()


def test_distributed_dp_clips_at_the_sites_and_sums_to_the_configured_noise(tmp_path):
    # 5,050 weights per site; each site's update (c - w0 per weight) is clipped to norm 1, and the
    # sites' noise shares (std z*C/sqrt(n)) sum to std z*C; the mean carries z*C/n = 0.5
    configs = _sites(tmp_path, "sa_wide", {1: 2.0, 2: 2.0},
                     {n: {"state-dir": str(tmp_path / f"st{n}"), "privacy-epsilon-budget": 50.0} for n in (1, 2)})
    start = SetTask(100, 50).init_model({}).state_dict()
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.0, max_noise_ratio=1000.0)
    s = run_secagg_training(InProcessGrid(_app(), configs), "sa_wide", rounds=1, run_config={},
                            out_dir=tmp_path / "o", min_replies=2, round_timeout=60, dp=dp)
    ck = load_checkpoint(tmp_path / "o" / "global_round_1.npz")
    w0 = np.concatenate([start["0.weight"].numpy().ravel(), start["0.bias"].numpy().ravel(),
                         start["1.weight"].numpy().ravel(), start["1.bias"].numpy().ravel()]).astype(np.float64)
    w1 = np.concatenate([ck[k].ravel() for k in ("0.weight", "0.bias", "1.weight", "1.bias")]).astype(np.float64)
    delta = 2.0 - w0
    clipped = delta / np.linalg.norm(delta)  # both sites send the same clipped update
    noise = w1 - w0 - clipped
    assert noise.std() == pytest.approx(0.5, rel=0.05) and abs(noise.mean()) < 0.03
    # BatchNorm moments: no noise (running_mean -> 2 exactly, up to quantization)
    assert np.allclose(ck["1.running_mean"], 2.0, atol=1e-4)
    # both survived: effective multiplier 1, epsilon of one Gaussian round at z = 1
    assert s.rounds[0].epsilon == pytest.approx(0.5 + 2 * np.sqrt(0.5 * np.log(1e5)))
    # each site charged its ledger at z*sqrt(threshold/n) = 1 (threshold 2 of 2)
    doc = json.loads((tmp_path / "st1" / "privacy_ledger.json").read_text())
    assert doc["entries"][0]["noise_multiplier"] == pytest.approx(1.0)


def test_dp_epsilon_counts_the_survivors_and_sites_charge_the_weakest_noise(tmp_path):
    from optima_common.privacy import epsilon_from_rho

    ledgers = {n: {"state-dir": str(tmp_path / f"st{n}"), "privacy-epsilon-budget": 50.0} for n in (1, 2)}
    ledgers[3] = {"state-dir": str(tmp_path / "st3"), "privacy-epsilon-budget": 1.0}  # one round is too much
    configs = _sites(tmp_path, "sa_toy", {1: 1.0, 2: 2.0, 3: 0.0}, ledgers)
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.0, max_noise_ratio=1000.0)
    s = run_secagg_training(InProcessGrid(_app(), configs), "sa_toy", rounds=1, run_config={},
                            out_dir=tmp_path / "o", min_replies=2, round_timeout=30, dp=dp)
    assert s.rounds[0].replies == 2 and "privacy budget spent" in s.rounds[0].failed[0]
    # 2 of 3 noise shares reached the sum: multiplier sqrt(2/3), rho = 1 / (2 * 2/3) = 0.75
    assert s.epsilon == pytest.approx(epsilon_from_rho(0.75, 1e-5))
    # threshold 2 of 3: each site charged itself at sqrt(2/3) before training
    for n in (1, 2):
        doc = json.loads((tmp_path / f"st{n}" / "privacy_ledger.json").read_text())
        assert doc["entries"][0]["noise_multiplier"] == pytest.approx(np.sqrt(2 / 3))
    assert not (tmp_path / "st3" / "privacy_ledger.json").exists()


def test_secagg_resume_continues_at_round_k_plus_1_and_keeps_the_privacy_account(tmp_path):
    from optima_common.privacy import epsilon_from_rho

    configs = _sites(tmp_path, "sa_toy", {1: 1.0, 2: 2.0},
                     {n: {"state-dir": str(tmp_path / f"st{n}"), "privacy-epsilon-budget": 50.0} for n in (1, 2)})
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.0, max_noise_ratio=1000.0)
    out = tmp_path / "o"
    run_secagg_training(InProcessGrid(_app(), configs, run_id=1), "sa_toy", rounds=1, run_config={}, out_dir=out,
                        min_replies=2, round_timeout=30, dp=dp)
    s = run_secagg_training(InProcessGrid(_app(), configs, run_id=2), "sa_toy", rounds=2, run_config={},
                            out_dir=out, min_replies=2, round_timeout=30, dp=dp, resume=True)
    assert [r.round for r in s.rounds] == [1, 2] and (out / "global_round_2.npz").is_file()
    assert s.epsilon == pytest.approx(epsilon_from_rho(2 * 0.5, 1e-5))  # both rounds at z = 1
    doc = json.loads((tmp_path / "st1" / "privacy_ledger.json").read_text())
    assert [(e["run_id"], e["round"]) for e in doc["entries"]] == [(1, 1), (2, 2)]


def test_a_dead_site_costs_only_the_timeout(tmp_path):
    # a SuperNode that never answers (killed): left out at the SecAgg+ setup after round_timeout
    import time

    grid = InProcessGrid(_app(), _sites(tmp_path, "sa_toy", {1: 1.0, 2: 2.0, 3: 5.0}), dead=[3])
    t0 = time.monotonic()
    s = run_secagg_training(grid, "sa_toy", rounds=1, run_config={}, out_dir=tmp_path / "o", min_replies=2,
                            round_timeout=1.0)
    assert time.monotonic() - t0 < 20 and s.rounds[0].replies == 2
    assert np.allclose(load_checkpoint(tmp_path / "o" / "global_round_1.npz")["0.weight"], 1.5, atol=1e-4)


def test_every_site_without_a_masked_update_is_named_whatever_the_workflow_reports():
    """A killed site sends nothing, or the SuperLink answers for it with an unnamed "Node
    Unavailable" error once its heartbeats stop (timing decides which; a CI run saw the second):
    both ways the round's failures name the site."""
    unavailable = "Error(code=5, reason='Error: Node Unavailable')"
    silent = dropout_lines([7], [])
    answered_for = dropout_lines([7], [unavailable, unavailable])
    assert silent == ["node 7: sent no masked update (dropped out of the SecAgg+ round)"]
    assert answered_for == [f"{silent[0]}: {unavailable}"]  # listed twice by the workflow, once here
    two = dropout_lines([7, 9], [unavailable])
    assert two[:2] == [silent[0], "node 9: sent no masked update (dropped out of the SecAgg+ round)"]
    assert two[2:] == [unavailable]
    assert dropout_lines([], ["odd failure"]) == ["odd failure"]
