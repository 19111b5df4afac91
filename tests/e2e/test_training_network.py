"""Federated pathology training over a real local Flower deployment (TLS, SuperNode auth).

Tiny slides and a tiny model: this proves the road (init weights from a site, train and
evaluate rounds, FedAvg at the coordinator, a checkpoint per round), not the accuracy, which
benchmarks/federated_vs_local_pathology.py measures.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from coordinator.flower.network import LocalNetwork, NodeSpec
from tests.conftest import REPO
from tests.e2e.test_flower_network import processes_mentioning

pytestmark = pytest.mark.slow


def test_two_sites_two_rounds_over_flower(tmp_path):
    nodes = []
    for i, site in enumerate(("path_north", "path_south")):
        data = tmp_path / site
        proc = subprocess.run([sys.executable, "-m", "site_agent", "images", "synth", "pathology", "--out",
                               str(data), "--site", site, "--seed", str(i + 1), "--slides", "10", "--width", "1024",
                               "--height", "768"], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        cfg = tmp_path / f"{site}.toml"  # the node only needs its data folder for training
        nodes.append(NodeSpec(site, cfg, {"image-root-pathology": str(data)}))
    request = {"task": "pathology", "rounds": 2, "min_replies": 2, "round_timeout": 300,
               "out": str(tmp_path / "training"),
               "run_config": {"backbone": "tiny", "epochs": 1, "input_size": 32, "max_steps_per_epoch": 3,
                              "batch_size": 8, "device": "cpu"}}
    with LocalNetwork(tmp_path / "network", nodes) as network:
        outcome = network.run("train", request, timeout=900)
    assert outcome["ok"], outcome
    rounds = outcome["summary"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["replies"] == 2 for r in rounds)
    assert all(r["num_examples"] > 0 and 0 <= r["eval_metrics"]["accuracy"] <= 1 for r in rounds)
    history = json.loads((tmp_path / "training" / "training_history.json").read_text())
    assert len(history["rounds"]) == 2
    first = np.load(tmp_path / "training" / rounds[0]["checkpoint"])
    second = np.load(tmp_path / "training" / rounds[1]["checkpoint"])
    assert set(first.files) == set(second.files) and any(not np.array_equal(first[k], second[k]) for k in first.files)
    assert processes_mentioning(str(tmp_path / "network")) == []
