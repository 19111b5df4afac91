"""Mammography training at a site and across sites: the CLI end to end (tiny model, 1 epoch),
metrics against scikit-learn and the generator's ground truth, one-line refusals, and a
federated round over two sites through the shared core's Flower handlers."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("ultralytics") is None:  # not imported here: it reads its settings at import
    pytest.skip("ultralytics not installed (train extra)", allow_module_level=True)

from optima_common.errors import ExitCode
from site_agent.cli import main
from site_agent.imaging.classify import patient_splits
from site_agent.imaging.synth import synth_site

TINY = ["--epochs", "1", "--backbone", "tiny", "--roi-size", "32", "--det-imgsz", "64", "--device", "cpu",
        "--min-test-patients", "1", "--bootstrap", "50"]


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("mammo_sites")
    # seeds giving both benign and malignant patients in every split (4/8 and 5/8 malignant)
    return [synth_site(root / name, name, seed=k, patients=8) and root / name
            for k, name in ((2, "site_a"), (1, "site_b"))]


def _truth(site_dir, seed: int = 0):
    """Per breast (patient, side): (malignant, subtype) and the split of its patient, from the CSV."""
    rows = list(csv.DictReader((site_dir / "clinical.csv").open()))
    split = patient_splits([r["ID1"] for r in rows], seed=seed,
                           labels=[int(r["classification"] == "Malignant") for r in rows])
    return rows, split


def test_train_cli_writes_every_output(sites, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "mammography", "--data", str(sites[0]), "--out", str(out), "-q", *TINY]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("mammography at") and "mAP50" in line
    for name in ("metrics.json", "confusion_matrix_stage1.png", "confusion_matrix_stage2.png", "roc_stage1.png",
                 "tsne_stage1.png", "tsne_stage2.png", "models/detector.pt", "models/stage1.pt", "models/stage2.pt"):
        assert (out / name).is_file(), name
    assert len(list(out.glob("gradcam_*.png"))) >= 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # staging folder gone
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["detection"]["map50"] <= 1.0 and 0.0 <= m["detection"]["map50_95"] <= m["detection"]["map50"]
    for stage in ("stage1", "stage2"):
        assert {"accuracy", "precision", "recall", "auroc"} <= set(m[stage])
    ex = m["explanations"]  # Grad-CAM pointing game against the true boxes, beside the metrics
    assert ex["n"] == m["data"]["split_images"]["test"] and 0 < ex["chance"] < 1 and 0 <= ex["pointing_game"] <= 1
    # test-set sizes and classes from the generator's table and the patient split, images = 2 per breast
    rows, split = _truth(sites[0])
    test = [r for r in rows if split[r["ID1"]] == "test"]
    assert m["stage1"]["n"] == 2 * len(test) == m["data"]["split_images"]["test"]
    assert m["stage2"]["n"] == 2 * sum(r["classification"] == "Malignant" for r in test)
    cm = np.array(m["stage1"]["confusion_matrix"])
    assert cm.sum(axis=1)[1] == 2 * sum(r["classification"] == "Malignant" for r in test)
    assert m["stage1"]["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())


def test_stage_metrics_match_sklearn_and_ground_truth(sites):
    from sklearn.metrics import (
        accuracy_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    from site_agent.imaging.classify import TwoStage
    from site_agent.imaging.pipeline import MammoConfig, load_site
    from site_agent.imaging.stages import evaluate_stage

    cfg = MammoConfig(backbone="tiny", roi_size=32)
    site = load_site(sites[1], cfg)
    torch.manual_seed(0)
    model = TwoStage("tiny")
    rois = site.rois("train") + site.rois("test")
    res = evaluate_stage(model, rois, 1, cfg)
    rows, split = _truth(sites[1])  # labels come from the clinical table: 2 images per breast
    used = [r for r in rows if split[r["ID1"]] in ("train", "test")]
    assert len(res.labels) == 2 * len(used)
    assert res.labels.sum() == 2 * sum(r["classification"] == "Malignant" for r in used)
    pred = res.probs.argmax(1)
    assert res.metrics["accuracy"] == pytest.approx(accuracy_score(res.labels, pred))
    assert res.metrics["precision"] == pytest.approx(precision_score(res.labels, pred, average="macro", zero_division=0))
    assert res.metrics["recall"] == pytest.approx(recall_score(res.labels, pred, average="macro", zero_division=0))
    if 0 < res.labels.sum() < len(res.labels):
        assert res.metrics["auroc"] == pytest.approx(roc_auc_score(res.labels, res.probs[:, 1]))
    res2 = evaluate_stage(model, rois, 2, cfg)
    assert len(res2.labels) == sum(r.stage2 is not None for r in rois) and res2.probs.shape[1] == 4


def test_bad_input_is_one_line_and_nothing_written(sites, tmp_path, capsys):
    import shutil

    assert main(["train", "mammography", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a folder" in err
    broken = tmp_path / "broken"
    shutil.copytree(sites[0], broken)
    (broken / "clinical.csv").write_text("ID1,LeftRight\nX,L\n")
    assert main(["train", "mammography", "--data", str(broken), "--out", str(tmp_path / "o2"), *TINY]) == ExitCode.MAMMOGRAPHY_DATA
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "clinical.csv" in err and "lacks column" in err
    assert not (tmp_path / "o2").exists()
    assert main(["images", "synth", "mammography", "--out", str(broken), "--site", "x"]) == 2  # not empty
    assert "not an empty folder" in capsys.readouterr().err


def test_cli_module_does_not_import_torch():
    code = "import sys, site_agent.cli as c; c.build_parser(); print('torch' in sys.modules, 'ultralytics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_federated_round_over_two_sites(sites, tmp_path):
    from flwr.clientapp import ClientApp

    from coordinator.flower.inprocess import InProcessGrid
    from coordinator.flower.training import load_checkpoint, run_federated_training
    from site_agent.training.federated import handle_evaluate, handle_train

    app = ClientApp()
    app.train()(handle_train)
    app.evaluate()(handle_evaluate)
    grid = InProcessGrid(app, {1: {"image-root-mammography": str(sites[0])},
                               2: {"image-root-mammography": str(sites[1])}})
    run_config = {"epochs": 1, "backbone": "tiny", "roi_size": 32, "device": "cpu", "lr": 1e-3,
                  "optimizer": "adam", "batch_size": 8, "seed": 0}
    summary = run_federated_training(grid, "mammography", rounds=2, run_config=run_config, out_dir=tmp_path,
                                     min_replies=2, round_timeout=300)
    assert [r.replies for r in summary.rounds] == [2, 2] and not summary.rounds[-1].failed
    ev = summary.rounds[-1].eval_metrics
    # small cells stay at the site: each site sent its matrix or is counted as withheld
    for stage in ("stage1_", "stage2_", "val_stage1_"):
        sent = ev.get(f"{stage}cm_sites", 0)
        assert sent + ev.get(f"{stage}cm_withheld_sites", 0) == 2 and (f"{stage}accuracy" in ev) == (sent > 0)
    if ev.get("stage1_cm_sites") == 2:  # pooled from the sites' matrices, not a weighted mean of macro metrics
        cm = np.array([[ev[f"stage1_cm_{i}_{j}"] for j in range(2)] for i in range(2)])
        tests = sum(2 * sum(_truth(s)[1][r["ID1"]] == "test" for r in _truth(s)[0]) for s in sites)
        assert cm.sum() == tests and ev["stage1_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        recall = [cm[k, k] / cm[k].sum() if cm[k].sum() else 0.0 for k in range(2)]
        assert ev["stage1_recall"] == pytest.approx(np.mean(recall))
    assert "stage1_train_loss" in summary.rounds[0].train_metrics
    # AUROC pooled from the sites' released malignant-score histograms; the validation split chose the round
    # (these 8-patient sites withhold every count; tests/test_eval_release.py covers the released path)
    sent = 2 - ev.get("stage1_hist_withheld_sites", 0)
    assert ("stage1_auroc_pooled" in ev) <= (sent > 0)
    if "stage1_auroc_pooled" in ev:
        assert 0 <= ev["stage1_auroc_pooled"] <= 1 and 0 <= ev["stage1_auroc_pooled_bound"] <= 0.5
    assert not any("scorehist" in k for k in ev)
    chosen = [r for r in summary.rounds if "val_stage1_auroc_pooled" in r.eval_metrics
              or "val_stage1_accuracy" in r.eval_metrics]
    assert (summary.best_round is not None) == bool(chosen)
    if chosen:
        assert summary.best_round in (1, 2) and summary.selection_metric.startswith("val_stage1")
    # what left each site: no count between 1 and the minimum (5)
    for rep in grid.received:
        for k, v in rep.content.metric_records["metrics"].items():
            if "cm_" in k and not k.endswith("withheld") or "scorehist_" in k or k == "num-examples":
                assert v == 0 or v >= 5, (k, v)
    g1, g2 = load_checkpoint(tmp_path / "global_round_1.npz"), load_checkpoint(tmp_path / "global_round_2.npz")
    assert {k.split(".")[0] for k in g1} == {"stage1", "stage2"}  # both stages travel together
    assert any(not np.allclose(g1[k], g2[k]) for k in g1 if k.endswith("weight"))
    # the FedAvg weights are the sites' training-image counts rounded to the base 10 (never exact)
    from optima_common.eval_release import released_weight

    counts = []
    for s in sites:
        rows, split = _truth(s)
        counts.append(released_weight(2 * sum(split[r["ID1"]] == "train" for r in rows), 10))
    assert summary.rounds[0].num_examples == sum(counts)
    train = [rep for rep in grid.received if rep.metadata.group_id.startswith("train-")]
    assert all(rep.content.metric_records["metrics"]["num-examples"] % 10 == 0 for rep in train)


def test_batchnorm_moments_on_the_wire_pool_the_variance():
    from site_agent.imaging.task import bn_from_wire, bn_to_wire

    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 1.0, (600, 3)), rng.normal(2.0, 0.5, (600, 3))  # two sites, shifted features
    wires = []
    for x in (a, b):
        bn = torch.nn.BatchNorm1d(3)
        bn.running_mean.copy_(torch.from_numpy(x.mean(0)))
        bn.running_var.copy_(torch.from_numpy(x.var(0)))
        wires.append(bn_to_wire(bn))
    pooled = torch.nn.BatchNorm1d(3)
    pooled.running_mean.copy_((wires[0].running_mean + wires[1].running_mean) / 2)  # FedAvg, equal counts
    pooled.running_var.copy_((wires[0].running_var + wires[1].running_var) / 2)
    bn_from_wire(pooled)
    both = np.concatenate([a, b])
    assert np.allclose(pooled.running_mean.numpy(), both.mean(0), atol=1e-5)
    assert np.allclose(pooled.running_var.numpy(), both.var(0), atol=1e-4)  # not the mean of the two variances


def test_cmmd_as_published_runs_without_boxes_and_small_test_split_is_refused(sites, tmp_path, capsys):
    """CMMD ships no lesion boxes and an .xlsx clinical sheet: whole-image classification."""
    import shutil

    from tests.test_imaging_data import _as_cmmd_xlsx

    cmmd = tmp_path / "cmmd"
    shutil.copytree(sites[0], cmmd)
    shutil.rmtree(cmmd / "labels")
    _as_cmmd_xlsx(cmmd / "clinical.csv", cmmd / "CMMD_clinicaldata_revision.xlsx")
    (cmmd / "clinical.csv").unlink()
    out = tmp_path / "out"
    assert main(["train", "mammography", "--data", str(cmmd), "--out", str(out), "-q", *TINY]) == 0
    line = capsys.readouterr().out
    assert "whole-image classification" in line and "95% CI" in line
    m = json.loads((out / "metrics.json").read_text())
    assert m["detection"]["map50"] is None and not (out / "models" / "detector.pt").exists()
    rows, split = _truth(sites[0])
    assert m["stage1"]["n"] == 2 * sum(split[r["ID1"]] == "test" for r in rows)
    lo, hi = m["stage1"]["ci95"]["auroc"]
    assert lo <= m["stage1"]["auroc"] <= hi and "malignant_recall" in m["stage1"]
    # the default floor (10 test patients) refuses this small site: one line, its own code, nothing written
    tiny = [a for k, a in enumerate(TINY) if "--min-test-patients" not in TINY[max(k - 1, 0):k + 1]]
    rc = main(["train", "mammography", "--data", str(cmmd), "--out", str(tmp_path / "o2"), "-q", *tiny])
    err = capsys.readouterr().err.strip()
    assert rc == ExitCode.TEST_SPLIT and len(err.splitlines()) == 1 and "too small to report" in err
    assert not (tmp_path / "o2").exists()
