"""Federated pathology training over a real local Flower deployment (TLS, SuperNode auth).

Tiny slides and a tiny model: this proves the road (init weights from a site, train and
evaluate rounds, FedAvg at the coordinator, a checkpoint per round), not the accuracy, which
benchmarks/federated_vs_local_pathology.py measures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from coordinator.flower.network import LocalNetwork, NodeSpec
from tests.conftest import REPO
from tests.e2e.test_flower_network import processes_mentioning

pytestmark = pytest.mark.slow


def left_running(text: str, wait: float = 20.0) -> list[int]:
    """Processes naming ``text`` that are still alive ``wait`` seconds after the network stopped
    (on a loaded host a SIGKILLed process can take a moment to leave /proc)."""
    deadline = time.monotonic() + wait
    while (found := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def pathology_nodes(tmp_path, sites, extra: dict | None = None) -> list[NodeSpec]:
    """One synthetic pathology site (10 slides) per name, seeds 1, 2, ...; a node needs only its
    data folder for training, plus the node config ``extra[site]`` where given."""
    nodes = []
    for i, site in enumerate(sites):
        data = tmp_path / site
        proc = subprocess.run([sys.executable, "-m", "site_agent", "images", "synth", "pathology", "--out",
                               str(data), "--site", site, "--seed", str(i + 1), "--slides", "10", "--width", "1024",
                               "--height", "768"], capture_output=True, text=True, cwd=REPO, check=False)
        assert proc.returncode == 0, proc.stderr
        config = {"image-root-pathology": str(data), **(extra or {}).get(site, {})}
        nodes.append(NodeSpec(site, tmp_path / f"{site}.toml", config))
    return nodes


def test_two_sites_two_rounds_over_flower(tmp_path):
    nodes = pathology_nodes(tmp_path, ("path_north", "path_south"))
    request = {"task": "pathology", "rounds": 2, "min_replies": 2, "round_timeout": 300,
               "out": str(tmp_path / "training"),
               "run_config": {"backbone": "tiny", "epochs": 1, "input_size": 32, "max_steps_per_epoch": 3,
                              "batch_size": 8, "device": "cpu"}}
    with LocalNetwork(tmp_path / "network", nodes) as network:
        outcome = network.run("train", request, timeout=900)
    assert outcome["ok"], outcome
    rounds = outcome["summary"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["replies"] == 2 for r in rounds)
    assert all(r["num_examples"] > 0 and 0 <= r["eval_metrics"].get("accuracy", 0) <= 1 for r in rounds)
    # a site whose tiny test split has a cell under the minimum withholds its matrix; it is counted
    assert all(r["eval_metrics"].get("cm_sites", 0) + r["eval_metrics"].get("cm_withheld_sites", 0) == 2
               for r in rounds)
    history = json.loads((tmp_path / "training" / "training_history.json").read_text())
    assert len(history["rounds"]) == 2
    first = np.load(tmp_path / "training" / rounds[0]["checkpoint"])
    second = np.load(tmp_path / "training" / rounds[1]["checkpoint"])
    assert set(first.files) == set(second.files) and any(not np.array_equal(first[k], second[k]) for k in first.files)
    assert left_running(str(tmp_path / "network")) == []


def test_secagg_rounds_with_a_site_dropping_out_complete_or_abort_as_configured(tmp_path):
    """Three SuperNodes; Flower's SecAgg+ workflow and mod over the real SuperLink. The third
    site has a privacy budget that one round cannot fit, so it refuses in SecAgg+ stage 2, after the
    key exchange: a quorum of 2 completes with the survivors' mean, a quorum of 3 aborts."""
    nodes = pathology_nodes(tmp_path, ("sa_north", "sa_south", "sa_east"),
                            {"sa_east": {"state-dir": str(tmp_path / "east-state"), "privacy-epsilon-budget": "1.0"}})
    request = {"task": "pathology", "rounds": 1, "min_replies": 2, "round_timeout": 300, "secagg": True,
               "out": str(tmp_path / "complete"),
               "run_config": {"backbone": "tiny", "epochs": 1, "input_size": 32, "max_steps_per_epoch": 2,
                              "batch_size": 8, "device": "cpu", "lr": 1e-3}}
    # distributed DP: the round's weakest noise (2 of 3 survivors) would cost sa_east more than its budget
    dp = {"clip_norm": 1.0, "noise_multiplier": 1.0, "max_noise_ratio": 1e9}
    with LocalNetwork(tmp_path / "network", nodes) as network:
        done = network.run("train", {**request, "dp": dp}, timeout=900)
        aborted = network.run("train", {**request, "min_replies": 3, "out": str(tmp_path / "abort")}, timeout=900)
    assert done["ok"], done
    rnd = done["summary"]["rounds"][0]
    assert done["summary"]["secure_aggregation"] and rnd["replies"] == 2
    assert "privacy budget spent" in " ".join(rnd["failed"]) and len(rnd["failed"]) == 1
    assert rnd["epsilon"] > 0 and done["summary"]["epsilon"] == rnd["epsilon"]
    assert rnd["eval_replies"] == 3 and 0 <= rnd["eval_metrics"].get("accuracy", 0) <= 1
    # AUROC pooled from the sites' Tumor-score histograms exactly when the pooled split has Tumor and
    # other patches (these tiny splits may lack Tumor); checkable when every site sent both its
    # matrix and its histogram (small cells stay at the site: withheld groups are counted)
    ev = rnd["eval_metrics"]
    for prefix in ("", "val_"):
        sent = ev.get(f"{prefix}cm_sites", 0)
        assert sent + ev.get(f"{prefix}cm_withheld_sites", 0) == 3 and (f"{prefix}accuracy" in ev) == (sent > 0)
        if sent == 3 and f"{prefix}tumor_hist_withheld_sites" not in ev:
            tumor = sum(ev[f"{prefix}cm_0_{j}"] for j in range(8))
            total = sum(v for k, v in ev.items() if k.startswith(f"{prefix}cm_") and k[len(prefix) + 3].isdigit())
            assert (f"{prefix}tumor_auroc_pooled" in ev) == (0 < tumor < total), (prefix, tumor, total)
        assert not any("scorehist" in k for k in ev)
    # a pooled validation metric chose the round whenever one was pooled
    from coordinator.flower.training import SELECTION_METRICS

    if any(k in ev for k in SELECTION_METRICS):
        assert done["summary"]["best_round"] == 1 and done["summary"]["selection_metric"].startswith("val_")
    else:
        assert done["summary"]["best_round"] is None
    assert (tmp_path / "complete" / "global_round_1.npz").is_file()
    assert not aborted["ok"] and "secure aggregation aborted" in aborted["error"], aborted
    assert not (tmp_path / "abort" / "global_round_1.npz").exists()
    assert left_running(str(tmp_path / "network")) == []


def _restart(network, spec, wait: float = 240.0) -> None:
    """Start a killed site's SuperNode again until it is activated ("SuperNode ID" in its log).
    The SuperLink refuses to activate a node with the same key while the dead one still counts as
    online (up to 2 heartbeat intervals); the SuperNode then exits (code 305): kill what it left
    (its SuperExec) and try again."""
    log = network.workdir / "logs" / f"supernode-{spec.site}.log"
    deadline = time.monotonic() + wait
    while True:
        offset = log.stat().st_size
        proc = network.start_node(spec)
        while proc.poll() is None and time.monotonic() < deadline:
            if b"SuperNode ID" in log.read_bytes()[offset:]:
                return
            time.sleep(0.5)
        network.kill_node(spec.site)
        assert time.monotonic() < deadline, f"{spec.site}'s SuperNode was not activated again within {wait:g} s"
        time.sleep(5.0)


def _local_update(data_dir, config):
    """(start weights, one site's SecAgg+ update) as site_agent.training.secagg computes them."""
    import copy

    from site_agent.training.federated import bn_from_wire, bn_to_wire, get_task
    from site_agent.training.loop import seed_everything

    adapter = get_task("pathology")
    seed_everything(0)
    start = {k: v.detach().clone() for k, v in bn_to_wire(adapter.init_model({**config, "init": True})).state_dict().items()}
    seed_everything(0)
    model = adapter.init_model(config)
    model.load_state_dict(start)
    bn_from_wire(model)
    frozen = copy.deepcopy(model)
    for p in frozen.parameters():
        p.requires_grad_(False)
    adapter.local_train(model, data_dir, config, frozen)
    local = bn_to_wire(model).state_dict()
    floats = [k for k, v in start.items() if v.is_floating_point()]
    return ({k: start[k].numpy().astype(np.float64) for k in floats},
            {k: local[k].detach().numpy().astype(np.float64) - start[k].numpy().astype(np.float64) for k in floats})


def _serverapps(workdir) -> list[int]:
    """The flwr-serverapp processes of this network (the coordinator's ServerApp runs)."""
    from pathlib import Path

    found = []
    for pid in processes_mentioning(str(workdir)):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"flwr-serverapp" in cmd:
            found.append(pid)
    return found


def test_coordinator_killed_mid_training_resumes_at_the_next_round(tmp_path):
    """A real SuperLink and two SuperNodes; ``coordinator train`` is started as a process and its
    ServerApp is SIGKILLed (with the command) once round 1 is checkpointed. ``coordinator train
    --resume`` then continues at round k+1 from ``global_round_<k>.npz`` (its digest is the
    weights round k+1 sent) and leaves rounds 1..k as they were."""
    import hashlib
    import os
    import signal

    from coordinator.flower.training import load_checkpoint, weights_sha256

    nodes = pathology_nodes(tmp_path, ("kill_north", "kill_south"))
    out = tmp_path / "training"
    args = [sys.executable, "-m", "coordinator", "train", "pathology", "--out", str(out), "--rounds", "3",
            "--min-replies", "2", "--round-timeout", "300", "--node-wait", "60", "--backbone", "tiny",
            "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--timeout", "900"]
    history = out / "training_history.json"
    with LocalNetwork(tmp_path / "network", nodes) as network:
        env = network._env("flwr_home")
        first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        deadline = time.monotonic() + 900
        rounds = []
        while time.monotonic() < deadline and first.poll() is None:
            if history.is_file():
                rounds = json.loads(history.read_text())["rounds"]
                if rounds:
                    break
            time.sleep(0.2)
        assert rounds, f"round 1 never finished (coordinator exit {first.poll()})"
        killed = _serverapps(tmp_path / "network")
        for pid in killed:  # the crash: the ServerApp and the command that started it
            os.kill(pid, signal.SIGKILL)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        assert killed, "no flwr-serverapp process found to kill"
        time.sleep(1.0)
        before = json.loads(history.read_text())["rounds"]
        k = len(before)
        assert 1 <= k < 3, k
        ckpt = out / f"global_round_{k}.npz"
        ckpt_bytes = hashlib.sha256(ckpt.read_bytes()).hexdigest()
        resumed = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    after = json.loads(history.read_text())["rounds"]
    assert [r["round"] for r in after] == [1, 2, 3]
    assert after[:k] == before  # rounds 1..k are not run again
    assert after[k]["start_sha256"] == weights_sha256(load_checkpoint(ckpt))  # round k+1 from checkpoint k
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == ckpt_bytes
    fresh = weights_sha256(load_checkpoint(out / "global_round_1.npz"))
    assert after[0]["start_sha256"] != fresh and all(r["replies"] == 2 for r in after)
    assert left_running(str(tmp_path / "network")) == []


def test_secagg_supernode_sigkilled_mid_round_completes_or_aborts_as_configured(tmp_path):
    """Three SuperNodes, SecAgg+ on. ``kx_east`` holds in the SecAgg+ fit stage (node config
    ``test-hold-secagg-fit``: it writes a marker after the key exchange, then waits); the test
    then SIGKILLs its SuperNode and the ClientApp it started (the whole process group). A quorum
    of 3 aborts ("secure aggregation aborted", no global model); after the site is restarted and
    killed again in the next run's fit stage, a quorum of 2 completes with the two survivors and
    names the dead site as failed; the new global model is the start plus the mean of the two
    survivors' updates, recomputed in the test. Small round timeout: the dead site costs it twice (collect and
    evaluate)."""
    import resource
    from concurrent.futures import ThreadPoolExecutor

    t_wall, ru = time.perf_counter(), (resource.getrusage(resource.RUSAGE_SELF),
                                       resource.getrusage(resource.RUSAGE_CHILDREN))
    marker = tmp_path / "east-in-fit"
    nodes = pathology_nodes(tmp_path, ("kx_north", "kx_south", "kx_east"),
                            {"kx_east": {"test-hold-secagg-fit": str(marker), "test-hold-seconds": "150"}})
    request = {"task": "pathology", "rounds": 1, "min_replies": 3, "round_timeout": 60, "node_wait": 60,
               "secagg": True,
               "run_config": {"backbone": "tiny", "epochs": 1, "input_size": 32, "max_steps_per_epoch": 2,
                              "batch_size": 8, "device": "cpu", "lr": 1e-3}}

    def run_and_kill(network, job):
        marker.unlink(missing_ok=True)
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(network.run, "train", job, timeout=600)
            deadline = time.monotonic() + 400
            while not marker.exists() and not future.done() and time.monotonic() < deadline:
                time.sleep(0.1)
            held = marker.exists()
            if held:  # mid-round, after the key exchange: the SuperNode and its ClientApp die
                network.kill_node("kx_east")
            return held, future.result()

    with LocalNetwork(tmp_path / "network", nodes) as network:
        held_3, aborted = run_and_kill(network, {**request, "out": str(tmp_path / "abort")})
        _restart(network, nodes[2])  # same key, same node id, once the SuperLink has seen the old one die
        held_2, done = run_and_kill(network, {**request, "min_replies": 2, "out": str(tmp_path / "complete")})
    assert held_3 and held_2, "kx_east never reached the SecAgg+ fit stage"
    assert not aborted["ok"] and "secure aggregation aborted" in aborted["error"], aborted
    assert not (tmp_path / "abort" / "global_round_1.npz").exists()
    assert done["ok"], done
    rnd = done["summary"]["rounds"][0]
    assert done["summary"]["secure_aggregation"] and rnd["replies"] == 2 and rnd["eval_replies"] == 2
    dead = [f for f in rnd["failed"] if "dropped out of the SecAgg+ round" in f]
    assert len(dead) == 1, rnd["failed"]
    node = dead[0].split(":")[0]  # "node N": its evaluation failed too
    assert all(f.startswith(f"{node}:") for f in rnd["failed"]) and len(rnd["failed"]) == 2, rnd["failed"]
    assert rnd["refused"] == []  # the survivors' replies pass the coordinator's re-audit
    # the global update is the mean of the two survivors' updates, recomputed here as each site
    # computes it (same seeded model, data and run config); SecAgg+ quantizes to ~4e-6
    from coordinator.flower.training import load_checkpoint

    config = {**request["run_config"], "fedprox_mu": 0.0, "secagg-range": 8.0, "task": "pathology", "round": 1}
    start, updates = zip(*(_local_update(tmp_path / site, config) for site in ("kx_north", "kx_south")))
    got = load_checkpoint(tmp_path / "complete" / "global_round_1.npz")
    moved = worst = alone = 0.0
    for k, upd in updates[0].items():
        mean = start[0][k] + (upd + updates[1][k]) / 2
        worst = max(worst, float(np.abs(got[k] - mean).max()))
        moved = max(moved, float(np.abs(got[k] - start[0][k]).max()))
        alone = max(alone, float(np.abs(got[k] - (start[0][k] + upd)).max()))
    assert worst < 2e-4 and moved > 50 * 2e-4 and alone > 10 * 2e-4, (worst, moved, alone)
    assert left_running(str(tmp_path / "network")) == []
    after = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, ru))
    print(f"\nkilled-supernode test: wall {time.perf_counter() - t_wall:.0f} s, "
          f"CPU (this process + reaped children) {cpu:.0f} s")
