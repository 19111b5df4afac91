"""`site-agent images synth pathology` and `site-agent train pathology` end to end on a tiny
site (tiny CNN, few steps): every output is written; bad input is one line, nothing half-written."""

from __future__ import annotations

import csv
import json

import pytest

from site_agent.cli import main
from site_agent.pathology import CLASSES


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "site"
    assert main(["images", "synth", "pathology", "--out", str(out), "--site", "alpha", "--seed", "3",
                 "--slides", "5", "--width", "1024", "--height", "768"]) == 0
    return out


def test_train_writes_every_output(site, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "pathology", "--data", str(site), "--out", str(out), "--epochs", "2", "--device", "cpu",
               "--backbone", "tiny", "--input-size", "48", "--batch-size", "16"])
    assert rc == 0, capsys.readouterr().err
    assert "accuracy" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    for required in ("metrics.json", "confusion_matrix.png", "roc.png", "pr.png", "tsne.png", "slide_proportions.csv",
                     "model_best.pt"):
        assert required in names
    assert any(n.startswith("gradcam_") for n in names)
    slides = list(csv.DictReader((site / "slides.csv").open()))
    assert {f"overlay_{r['slide_id']}.png" for r in slides} <= names
    m = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "auroc"):
        assert key in m
        assert set(m["per_class"]) == set(CLASSES)
        assert all(key in v or key in ("accuracy",) for v in m["per_class"].values())
    assert sum(v["support"] for v in m["per_class"].values()) == m["n"] == m["patches"][m["evaluated_on"]]
    assert sum(map(sum, m["confusion_matrix"])) == m["n"]
    rows = list(csv.DictReader((out / "slide_proportions.csv").open()))
    assert len(rows) == len(slides)
    for r in rows:
        props = [float(v) for k, v in r.items() if k.startswith("prop_")]
        assert len(props) == 8 and (sum(props) == pytest.approx(1, abs=1e-3) or int(r["tissue_patches"]) == 0)
    assert not list(out.glob(".*.tmp"))


def test_train_with_linear_probe_on_a_local_encoder(site, tmp_path):
    import torch

    from site_agent.training.models import build_classifier

    torch.save(build_classifier("tiny", 8).state_dict(), tmp_path / "enc.pt")
    out = tmp_path / "o"
    assert main(["train", "pathology", "--data", str(site), "--out", str(out), "--epochs", "1", "--device", "cpu",
                 "--backbone", "tiny", "--input-size", "32", "--probe-encoder", str(tmp_path / "enc.pt"),
                 "--probe-backbone", "tiny"]) == 0
    probe = json.loads((out / "probe_metrics.json").read_text())
    assert 0 <= probe["accuracy"] <= 1 and probe["n"] == json.loads((out / "metrics.json").read_text())["n"]


@pytest.mark.parametrize("case", ["missing", "bad_csv", "tampered_slide", "bad_geojson"])
def test_bad_input_is_one_line(site, tmp_path, capsys, case):
    import shutil

    data = tmp_path / "data"
    if case != "missing":
        shutil.copytree(site, data)
    if case == "bad_csv":
        (data / "slides.csv").write_text("slide,who\nx,y\n")
    elif case == "tampered_slide":
        first = next(csv.DictReader((data / "slides.csv").open()))
        (data / first["slide"]).write_bytes(b"II*\x00garbage" * 10)
    elif case == "bad_geojson":
        first = next(csv.DictReader((data / "slides.csv").open()))
        (data / first["annotations"]).write_text('{"type": "FeatureCollection", "features": [')
    out = tmp_path / "out"
    rc = main(["train", "pathology", "--data", str(data), "--out", str(out), "--epochs", "1", "--device", "cpu",
               "--backbone", "tiny", "--input-size", "32"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and err.startswith("site-agent: error:"), err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_synth_refuses_to_overwrite(site, capsys):
    rc = main(["images", "synth", "pathology", "--out", str(site), "--site", "alpha", "--slides", "1"])
    assert rc != 0 and "already holds" in capsys.readouterr().err


def test_linear_probe_with_a_torchscript_encoder(tmp_path):
    """A scripted encoder whose features are the per-channel means: the probe's accuracy must
    equal scikit-learn's logistic regression fitted on those same means (computed here)."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from torch.utils.data import TensorDataset

    from site_agent.pathology.probe import linear_probe, load_encoder
    from site_agent.training.loop import TrainConfig

    class Means(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    torch.jit.save(torch.jit.script(Means()), str(tmp_path / "enc.ts"))
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (120,), generator=g)
    x = torch.rand(120, 3, 8, 8, generator=g) * 0.5
    x[torch.arange(120), y] += 0.3  # class k: channel k brighter
    train, test = TensorDataset(x[:80], y[:80]), TensorDataset(x[80:], y[80:])
    m, yte, _probs = linear_probe(load_encoder(tmp_path / "enc.ts", "tiny"), train, test, TrainConfig(device="cpu"))
    f = x.mean(dim=(2, 3)).numpy()
    sc = StandardScaler().fit(f[:80])
    ref = LogisticRegression(max_iter=2000, C=0.5, random_state=0).fit(sc.transform(f[:80]), y[:80].numpy())
    assert m["accuracy"] == pytest.approx(float((ref.predict(sc.transform(f[80:])) == y[80:].numpy()).mean()))
    assert m["accuracy"] > 0.9 and np.array_equal(yte, y[80:].numpy())
