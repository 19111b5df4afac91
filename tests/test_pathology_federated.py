"""The pathology task over Flower (in-process grid): two sites, two rounds, a tiny CNN — the CI
size of benchmarks/federated_vs_local_pathology.py; also a site's data folder from its TOML."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "federated_vs_local_pathology.py"


def _bench():
    spec = importlib.util.spec_from_file_location("fed_vs_local", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_two_site_two_round_federated_vs_local(tmp_path):
    r = _bench().run_seed(1, tmp_path, slides=6, size=(768, 768), backbone="tiny", input_size=32, rounds=2,
                          local_epochs=1, batch_size=16, lr=3e-3, n_sites=2, max_steps=4)
    assert r["pooled_test_patches"] > 0
    assert r["federated"]["n"] == r["pooled_test_patches"] == r["local"][0]["n"]
    for part in (r["federated"], r["local_mean"]):
        assert 0 <= part["accuracy"] <= 1 and 0 <= part["f1"] <= 1
    assert len(r["rounds"]) == 2
    # tiny splits give confusion cells under the minimum: a site withholds its matrix (and its
    # accuracy); the pooled accuracy covers exactly the sites that sent, and every site is counted
    for m in r["rounds"]:
        assert m.get("cm_sites", 0) + m.get("cm_withheld_sites", 0) == 2, m
        assert ("accuracy" in m) == (m.get("cm_sites", 0) > 0)
        assert "loss" in m or m["cm_withheld_sites"] == 2  # a split under the minimum sends n = 0
    assert (tmp_path / "fed-1" / "global_round_2.npz").exists()
    assert (tmp_path / "fed-1" / "training_history.json").exists()


def test_site_data_folder_from_site_config(tmp_path):
    import pytest
    from flwr.app import Context, RecordDict

    from optima_common.errors import ConfigError
    from site_agent.training.federated import site_data_dir
    from tests.factories import make_keys, write_site_config

    (tmp_path / "slides").mkdir()
    ctx = lambda cfg: Context(run_id=1, node_id=1, node_config=cfg, state=RecordDict(), run_config={})
    assert site_data_dir(ctx({"image-root-pathology": str(tmp_path / "slides")}), "pathology") == tmp_path / "slides"
    keys = make_keys(tmp_path / "keys")
    toml = write_site_config(tmp_path, keys, extra='[image_roots]\npathology = "slides"')
    assert site_data_dir(ctx({"site-config": str(toml)}), "pathology") == (tmp_path / "slides").resolve()
    with pytest.raises(ConfigError, match="no image_roots.mammography"):
        site_data_dir(ctx({"site-config": str(toml)}), "mammography")
    with pytest.raises(ConfigError, match="neither"):
        site_data_dir(ctx({}), "pathology")
