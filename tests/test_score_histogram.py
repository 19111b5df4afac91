"""Federated AUROC from per-site score histograms against scikit-learn on the pooled scores; the
released cells respect the minimum cell count; a pooled validation metric chooses the round."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from flwr.clientapp import ClientApp
from sklearn.metrics import roc_auc_score
from torch import nn

from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.training import (
    RoundRecord,
    choose_round,
    run_federated_training,
)
from optima_common import score_histogram as H
from site_agent.training.federated import handle_evaluate, handle_train, register_task


def _site_scores(seed: int, n: int, shift: float):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + shift * (2 * y - 1))))
    return y, score


def test_pooled_histogram_auroc_matches_sklearn_within_the_tie_bound():
    sites = [_site_scores(s, n, shift) for s, n, shift in ((1, 300, 0.8), (2, 150, 0.3), (3, 500, 1.2))]
    y = np.concatenate([s[0] for s in sites])
    score = np.concatenate([s[1] for s in sites])
    exact = roc_auc_score(y, score)
    for bins in (32, 8, 2):
        value, bound = H.auroc(*[sum(c) for c in zip(*[np.array(H.histogram(ys, ss, bins)) for ys, ss in sites])])
        assert abs(value - exact) <= bound + 1e-12
        assert bound <= 1.0 / bins  # scores of bounded density: the tie bound is within the bin width here
    # 32 single bins: close to exact
    value, bound = H.auroc(*[sum(c) for c in zip(*[np.array(H.histogram(ys, ss)) for ys, ss in sites])])
    assert abs(value - exact) < 0.01 and bound < 0.02
    # sites whose released intervals differ (merged at different minimum cell counts) still pool
    cells = [c for (ys, ss), k in zip(sites, (5, 10, 20)) for c in H.release(*H.histogram(ys, ss), k)]
    value, bound = H.auroc_cells(cells)
    assert abs(value - exact) <= bound + 1e-12 and bound < 0.1  # merging for k costs resolution


def test_released_cells_are_zero_or_at_least_the_minimum():
    y, score = _site_scores(7, 60, 1.0)
    neg, pos = H.histogram(y, score)
    assert any(0 < c < 5 for c in neg + pos)  # the raw 32-bin grid has small cells
    cells = H.release(neg, pos, 5)
    assert all(c == 0 or c >= 5 for *_, c in cells)
    for cls, counts in ((0, neg), (1, pos)):
        mine = [c for c in cells if c[0] == cls]
        assert sum(c[3] for c in mine) == sum(counts)
        assert mine[0][1] == 0 and mine[-1][2] == 32 and all(a[2] == b[1] for a, b in itertools.pairwise(mine))
    # hand-built (expectations written first): 6 bins, minimum 5
    assert H.release_class([2, 3, 0, 0, 6, 1], 5, 1) == [(1, 0, 2, 5), (1, 2, 4, 0), (1, 4, 6, 7)]
    assert H.release_class([0, 0, 5, 0, 2, 0], 5, 0) == [(0, 0, 2, 0), (0, 2, 6, 7)]
    assert H.release_class([1, 0, 2, 0, 0, 0], 5, 0) == [(0, 0, 6, 3)]  # a class under 5 in all
    m = H.release_metrics({**H.to_metrics("x_", [2, 3] + [0] * 30, [0] * 31 + [5]), "accuracy": 0.5}, 5)
    assert m == {"accuracy": 0.5, "x_scorehist_0_0_2": 5.0, "x_scorehist_0_2_32": 0.0,
                 "x_scorehist_1_0_31": 0.0, "x_scorehist_1_31_32": 5.0}
    # intervals decide the pairs they can: all 5 positives above all 5 negatives
    assert H.auroc_cells(H.parse(m)["x_"]) == (1.0, 0.0)


class ScoreTask:
    """Each site's folder holds its labels and scores (scores.npy); evaluation sends histograms."""

    def init_model(self, run_config):
        return nn.Linear(2, 1)

    def local_train(self, model, site_data_dir: Path, run_config, global_model):
        return 1, {}

    def local_evaluate(self, model, site_data_dir: Path, run_config):
        y, s = np.load(site_data_dir / "scores.npy")
        return len(y), H.to_metrics("", *H.histogram(y.astype(int), s))


register_task("scoretoy", ScoreTask())


def test_coordinator_pools_released_histograms_into_auroc(tmp_path):
    app = ClientApp()
    app.train()(handle_train)
    app.evaluate()(handle_evaluate)
    sites, configs = [], {}
    for node, (seed, n, shift) in enumerate(((1, 300, 0.8), (2, 150, 0.3), (3, 500, 1.2)), start=1):
        y, s = _site_scores(seed, n, shift)
        sites.append((y, s))
        d = tmp_path / f"s{node}"
        d.mkdir()
        np.save(d / "scores.npy", np.stack([y, s]))
        configs[node] = {"image-root-scoretoy": str(d), "min-cell-count": 10}
    grid = InProcessGrid(app, configs)
    summary = run_federated_training(grid, "scoretoy", rounds=1, run_config={}, out_dir=tmp_path / "o", min_replies=3,
                                     round_timeout=30)
    m = summary.rounds[0].eval_metrics
    exact = roc_auc_score(np.concatenate([y for y, _ in sites]), np.concatenate([s for _, s in sites]))
    assert abs(m["auroc_pooled"] - exact) <= m["auroc_pooled_bound"] + 1e-12
    assert m["auroc_pooled_bound"] < 0.1
    assert not any(H.TAG in k for k in m)  # the pooled histogram is not re-published
    for rep in grid.received:  # what left each site: cells 0 or >= 10, no scores
        cells = {k: v for k, v in rep.content.metric_records.get("metrics", {}).items() if H.TAG in k}
        assert all(v == 0 or v >= 10 for v in cells.values())


def test_a_validation_metric_chooses_the_round_not_a_test_metric():
    def rec(r, val, test):
        return RoundRecord(round=r, replies=2, failed=[], num_examples=1, train_metrics={}, eval_replies=2,
                           eval_metrics={"val_stage1_auroc_pooled": val, "stage1_auroc_pooled": test},
                           checkpoint=f"global_round_{r}.npz", seconds=0.0)
    rounds = [rec(1, 0.70, 0.90), rec(2, 0.80, 0.60), rec(3, 0.80, 0.95)]
    assert choose_round(rounds) == (2, "val_stage1_auroc_pooled")
    assert choose_round([]) == (None, None)


@pytest.mark.parametrize("bins", [1, 2, 32])
def test_auroc_of_perfectly_separated_scores(bins):
    neg, pos = H.histogram([0, 0, 1, 1], [0.01, 0.02, 0.98, 0.99], bins)
    value, bound = H.auroc(neg, pos)
    assert abs(value - 1.0) <= bound
