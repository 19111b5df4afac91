"""Small cells in federated evaluation replies, from the attacker's side: a site whose test split
gives a confusion cell of 2 sends nothing from which that 2 can be derived; the coordinator pools
accuracy/P/R/F1 over the sites that sent their matrices (checked against scikit-learn on those
sites' pooled predictions) and says how many were left out."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from flwr.clientapp import ClientApp
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torch import nn

from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.training import run_federated_training
from optima_common import score_histogram as H
from optima_common.eval_release import release_evaluation
from site_agent.training.federated import handle_evaluate, handle_train, register_task
from site_agent.training.metrics import classification_metrics, summary_metrics

MIN = 5


def _split(rng, tn, fp, fn, tp):
    """Labels and malignant scores with the given confusion cells at the argmax threshold 0.5."""
    lo = lambda k: rng.uniform(0.02, 0.48, k)
    hi = lambda k: rng.uniform(0.52, 0.98, k)
    y = np.r_[np.zeros(tn + fp, int), np.ones(fn + tp, int)]
    s = np.r_[lo(tn), hi(fp), lo(fn), hi(tp)]
    return y, s


def random_binary_replies(rng, count: int, prefix: str = "k_"):
    """``count`` random binary evaluations with small and large cells: (TN, FP, FN, TP, labels,
    the site's unreleased metrics: 2x2 matrix and score histogram under ``prefix``); empty splits skipped."""
    for _ in range(count):
        cells = [int(c) for c in rng.choice([0, 1, 2, 3, 4, 5, 6, 9, 20], 4)]
        y, s = _split(rng, *cells)
        if len(y) == 0:
            continue
        hist = H.to_metrics(prefix, *H.histogram(y, s))
        cm = {f"{prefix}cm_{i}_{j}": float(c) for (i, j), c in zip(itertools.product((0, 1), (0, 1)), cells)}
        yield cells, y, {**hist, **cm}


class BinaryTask:
    """A stage-1-like binary task: test.npy / val.npy hold labels and scores; evaluation sends the
    confusion matrix, headline metrics and the score histogram of each split, as the image tasks do."""

    def init_model(self, run_config):
        return nn.Linear(2, 1)

    def local_train(self, model, site_data_dir: Path, run_config, global_model):
        return 1, {}

    def local_evaluate(self, model, site_data_dir: Path, run_config):
        out = {}
        for split, prefix in (("test", "stage1_"), ("val", "val_stage1_")):
            y, s = np.load(site_data_dir / f"{split}.npy")
            y = y.astype(int)
            m = summary_metrics(classification_metrics(y, np.c_[1 - s, s], ["benign", "malignant"]))
            out.update({f"{prefix}{k}": v for k, v in m.items()})
            out.update(H.to_metrics(prefix, *H.histogram(y, s)))
        out["stage1_loss"] = 0.3
        return len(np.load(site_data_dir / "test.npy")[0]), out


register_task("binarytoy", BinaryTask())

# (test cells, val cells) as (TN, FP, FN, TP); site 2's test split has 2 false negatives
SITES = {1: ((40, 6, 7, 30), (20, 5, 5, 20)),
         2: ((30, 6, 2, 30), (20, 5, 6, 20)),
         3: ((50, 9, 8, 45), (25, 0, 5, 25))}


def _grid(tmp_path):
    rng = np.random.default_rng(7)
    data, configs = {}, {}
    for node, cells in SITES.items():
        d = tmp_path / f"s{node}"
        d.mkdir()
        for split, c in zip(("test", "val"), cells):
            y, s = _split(rng, *c)
            data[(node, split)] = (y, s)
            np.save(d / f"{split}.npy", np.stack([y, s]))
        configs[node] = {"image-root-binarytoy": str(d), "min-cell-count": MIN}
    app = ClientApp()
    app.train()(handle_train)
    app.evaluate()(handle_evaluate)
    return InProcessGrid(app, configs), data


def _bounds(cells, cls, below: bool):
    """What the released intervals of class ``cls`` tell about its cases below (or above) score 0.5:
    (fewest, most)."""
    half = H.FINE // 2
    inside = [c for k, lo, hi, c in cells if k == cls and (hi <= half if below else lo >= half)]
    touch = [c for k, lo, hi, c in cells if k == cls and (lo < half if below else hi > half)]
    return sum(inside), sum(touch)


def test_a_confusion_cell_of_two_cannot_be_derived_from_the_reply(tmp_path):
    grid, _ = _grid(tmp_path)
    run_federated_training(grid, "binarytoy", rounds=1, run_config={}, out_dir=tmp_path / "o", min_replies=3,
                           round_timeout=30)
    evaluate = [rep for rep in grid.received if rep.metadata.group_id.startswith("evaluate")]
    assert len(evaluate) == 3
    for rep in evaluate:
        # every record the site sent: metrics only (no arrays, no config) on evaluate
        assert set(rep.content.keys()) == {"metrics"}
        m = dict(rep.content.metric_records["metrics"])
        node = rep.metadata.src_node_id
        tn, fp, fn, tp = SITES[node][0]
        counts = {k: v for k, v in m.items() if H.TAG in k or k == "num-examples" or "cm_" in k}
        assert all(v == 0 or v >= MIN for k, v in counts.items() if not k.endswith("withheld")), counts
        if node != 2:
            assert m["stage1_cm_1_0"] == fn and "stage1_cm_withheld" not in m
            continue
        # the site with FN = 2: no matrix, no site metric of that split, only a flag
        assert not any(k.startswith("stage1_cm_") and k[-1].isdigit() for k in m)
        assert m["stage1_cm_withheld"] == 1.0
        assert not any(f"stage1_{h}" in m for h in ("accuracy", "precision", "recall", "f1", "auroc"))
        # attacker: every scalar times every released total (n, class totals), and its complement
        cells = H.parse(m)["stage1_"]
        totals = [m["num-examples"]] + [sum(c for k, *_, c in cells if k == cls) for cls in (0, 1)]
        assert totals == [tn + fp + fn + tp, tn + fp, fn + tp]  # released, all >= MIN
        for v, t in itertools.product(m.values(), totals):
            assert abs(v * t - fn) > 1e-6 and abs((1 - v) * t - fn) > 1e-6, (v, t)
        # attacker: the histogram bounds the false negatives only to [0, >= MIN] (2 hides in an interval)
        least, most = _bounds(cells, 1, below=True)
        assert least == 0 and most >= MIN
        # and the validation split of this site (all cells >= 5) is sent, its histogram split at 0.5
        vtn, vfp, vfn, vtp = SITES[2][1]
        assert [m[f"val_stage1_cm_{i}_{j}"] for i in (0, 1) for j in (0, 1)] == [vtn, vfp, vfn, vtp]
        vcells = H.parse(m)["val_stage1_"]
        assert not any(lo < H.FINE // 2 < hi for _, lo, hi, c in vcells if c)  # no interval straddles 0.5
        assert _bounds(vcells, 1, below=True) == (vfn, vfn)  # agrees with the released cell, adds nothing


def test_pooled_metrics_over_the_sites_that_sent_match_sklearn(tmp_path):
    grid, data = _grid(tmp_path)
    summary = run_federated_training(grid, "binarytoy", rounds=2, run_config={}, out_dir=tmp_path / "o",
                                     min_replies=3, round_timeout=30)
    m = summary.rounds[0].eval_metrics
    sent = [1, 3]  # site 2 withheld its test matrix
    y = np.concatenate([data[(n, "test")][0] for n in sent])
    pred = (np.concatenate([data[(n, "test")][1] for n in sent]) > 0.5).astype(int)
    assert m["stage1_accuracy"] == accuracy_score(y, pred)
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        assert abs(m[f"stage1_{name}"] - fn(y, pred, average="macro", labels=[0, 1], zero_division=0)) < 1e-12
    assert m["stage1_cm_withheld_sites"] == 1 and m["stage1_cm_sites"] == 2
    # the histogram of site 2 was safe (class totals >= 5): pooled AUROC covers all three sites
    y_all = np.concatenate([data[(n, "test")][0] for n in SITES])
    s_all = np.concatenate([data[(n, "test")][1] for n in SITES])
    assert abs(m["stage1_auroc_pooled"] - roc_auc_score(y_all, s_all)) <= m["stage1_auroc_pooled_bound"] + 1e-12
    # validation pooled from all three sites; the round is chosen on validation
    yv = np.concatenate([data[(n, "val")][0] for n in SITES])
    pv = (np.concatenate([data[(n, "val")][1] for n in SITES]) > 0.5).astype(int)
    assert m["val_stage1_accuracy"] == accuracy_score(yv, pv) and "val_stage1_cm_withheld_sites" not in m
    assert summary.selection_metric == "val_stage1_auroc_pooled" and summary.best_round == 1


def test_release_by_hand():
    # a break at 0.5 is kept only when both sides can be merged to >= min
    assert H.release_class([2, 3, 0, 4, 1, 0], 5, 1, (3,)) == [(1, 0, 2, 5), (1, 2, 3, 0), (1, 3, 5, 5), (1, 5, 6, 0)]
    assert H.release_class([2, 3, 0, 2, 1, 0], 5, 1, (3,)) == [(1, 0, 6, 8)]  # the 3 above the break would be derivable
    hist = H.to_metrics("p_", [3] + [0] * 31, [0] * 31 + [9])
    # a class of 3: its histogram is withheld (with n it would give the other class too)
    n, out = release_evaluation(12, {**hist, "p_cm_0_0": 3.0, "p_cm_1_1": 9.0, "p_accuracy": 1.0, "p_loss": 0.2}, 5)
    assert (n, out) == (12, {"p_cm_withheld": 1.0, "p_hist_withheld": 1.0, "p_loss": 0.2})
    # a split of 4 cases: nothing count-derived leaves, n is sent as 0
    n, out = release_evaluation(4, {"accuracy": 0.75, "loss": 0.5}, 5)
    assert (n, out) == (0, {"loss": 0.5})


def test_every_small_cell_hides_in_an_interval_of_at_least_the_minimum():
    """Many random binary splits: when the matrix is withheld, the released histogram bounds each
    small cell (TN, FP, FN, TP between 1 and min - 1) no tighter than [0, >= min]; when it is
    sent, the histogram's sides equal the released cells (nothing finer is implied)."""
    rng = np.random.default_rng(3)
    withheld = 0
    for cells, y, metrics in random_binary_replies(rng, 400):
        _, out = release_evaluation(len(y), metrics, MIN)
        if "k_hist_withheld" in out:  # a class total under the minimum
            continue
        released = H.parse(out)["k_"]
        assert all(c == 0 or c >= MIN for *_, c in released)
        # (cls, below 0.5) for TN, FP, FN, TP
        for cell, (cls, below) in zip(cells, ((0, True), (0, False), (1, True), (1, False))):
            least, most = _bounds(released, cls, below)
            assert least <= cell <= most
            if "k_cm_withheld" in out and 0 < cell < MIN:
                withheld += 1
                assert least == 0 and most >= MIN, (cells, released)
            if "k_cm_withheld" not in out:
                assert least == most == cell
    assert withheld > 50  # the attack was tried often enough
