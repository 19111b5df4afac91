"""Faithful explanations: Grad-CAM's pointing game on synthetic lesions (the heat maximum must
fall inside the true lesion box far more often than chance), and consistent synthetic patients."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from site_agent.imaging.synth import synth_site


def test_gradcam_points_at_the_lesion_after_training(tmp_path):
    from site_agent.imaging.classify import RoiDataset, TwoStage
    from site_agent.imaging.pipeline import MammoConfig, load_site
    from site_agent.imaging.stages import pointing_game
    from site_agent.training.loop import TrainConfig, fit

    synth_site(tmp_path / "s", "site_a", seed=5, patients=40)
    cfg = MammoConfig(backbone="tiny", roi_size=64, device="cpu")
    site = load_site(tmp_path / "s", cfg)
    torch.manual_seed(0)
    model = TwoStage("tiny")
    train = site.rois("train")
    untrained = pointing_game(model, train[:40], [r.box for r in train[:40]], cfg)
    fit(model.stage1, RoiDataset(train, 1, 64, train=True), RoiDataset(site.rois("val"), 1, 64),
        TrainConfig(epochs=8, batch_size=16, lr=1e-3, device="cpu", patience=8), tmp_path / "s1.pt")
    trained = pointing_game(model, train[:40], [r.box for r in train[:40]], cfg)
    # measured: 0.85 of 40 training ROIs with chance 0.36 (a uniformly placed maximum)
    assert trained["n"] == 40 and 0.2 < trained["chance"] < 0.5
    assert trained["pointing_game"] >= 0.6 and trained["pointing_game"] >= trained["chance"] + 0.2
    assert trained["pointing_game"] > untrained["pointing_game"]


@pytest.fixture
def one_thread():
    """One torch thread (a shared 2-core CI host): ~40 CPU s instead of ~120 with two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_resnet18_gradcam_points_at_the_lesion_on_held_out_images(tmp_path, monkeypatch, one_thread):
    """The default CPU backbone (ResNet-18, 64 px ROIs), trained briefly, must point at the lesion
    on held-out images far more often than chance and than before training. With the old CAM
    target (layer4, a 2x2 map at 64 px) the same model scores below chance (issue 17).
    Measured (2026-12-04, 60 patients, 15 epochs, 42 CPU s): 0.75 of 40 val+test ROIs (layer3,
    4x4) against chance 0.36; untrained 0.025; layer4 0.2."""
    from site_agent.imaging.classify import RoiDataset, TwoStage
    from site_agent.imaging.pipeline import MammoConfig, load_site
    from site_agent.imaging.stages import pointing_game
    from site_agent.training import models
    from site_agent.training.loop import fit

    synth_site(tmp_path / "s", "site_a", seed=7, patients=60)
    cfg = MammoConfig.for_device("cpu", epochs=15, patience=15)
    assert (cfg.backbone, cfg.roi_size) == ("resnet18", 64)
    site = load_site(tmp_path / "s", cfg)
    held_out = site.rois("val") + site.rois("test")
    truth = [r.box for r in held_out]
    torch.manual_seed(0)
    model = TwoStage(cfg.backbone, cfg.weights)
    untrained = pointing_game(model, held_out, truth, cfg)
    fit(model.stage1, RoiDataset(site.rois("train"), 1, cfg.roi_size, train=True, seed=cfg.seed),
        RoiDataset(site.rois("val"), 1, cfg.roi_size), cfg.train_config(), tmp_path / "s1.pt")
    trained = pointing_game(model, held_out, truth, cfg)
    monkeypatch.setattr(models, "MIN_CAM_CELLS", 1)  # the old target: the last block whatever its map
    old = pointing_game(model, held_out, truth, cfg)
    assert trained["n"] == len(held_out) >= 30 and 0.25 < trained["chance"] < 0.5
    assert (trained["cam_layer"], old["cam_layer"]) == ("layer3 (4x4)", "layer4 (2x2)")
    assert sum(p["n"] for p in trained["by_predicted"].values()) == trained["n"]
    assert trained["pointing_game"] >= trained["chance"] + 0.25, trained
    assert trained["pointing_game"] >= untrained["pointing_game"] + 0.2, (trained, untrained)
    assert old["pointing_game"] < old["chance"], old


def test_synthetic_patients_keep_one_age(tmp_path):
    synth_site(tmp_path / "s", "site_b", seed=2, patients=60)
    rows = list(csv.DictReader((Path(tmp_path) / "s" / "clinical.csv").open()))
    ages: dict[str, set] = {}
    for r in rows:
        ages.setdefault(r["ID1"], set()).add(r["Age"])
    assert all(len(a) == 1 for a in ages.values())
    assert any(len([r for r in rows if r["ID1"] == p]) == 2 for p in ages)  # some patients have two breasts
