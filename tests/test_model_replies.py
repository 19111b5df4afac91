"""What sites send in federated training rounds, from the coordinator's side.

FedAvg weights: a train reply carries the training-set size rounded to the site's base, never the
exact size, and FedAvg is the weighted mean with exactly those released weights (hand-computed).
Evaluation replies: declared result types (``model_evaluation``, ``model_training_weight``) whose
relations hold on the true counts, audited by the same ``check_release`` as every released table;
an attacker who reads only the replies the coordinator received cannot narrow a small cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.clientapp import ClientApp
from torch import nn

from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.training import load_checkpoint, run_federated_training
from optima_common import score_histogram as H
from optima_common.disclosure import audit as A
from optima_common.disclosure import check_release, solve
from optima_common.disclosure import declarations as D
from optima_common.disclosure.frame import audit_frame
from optima_common.disclosure.model_replies import (
    EVALUATION,
    TRAINING,
    check_reply,
    reply_table,
    training_table,
)
from optima_common.eval_release import release_evaluation, released_weight
from site_agent.training.federated import handle_evaluate, handle_train, register_task
from site_agent.training.metrics import classification_metrics, summary_metrics
from tests.test_eval_release import SITES as EVAL_SITES
from tests.test_eval_release import _grid as eval_grid
from tests.test_eval_release import _split, random_binary_replies

MIN = 5
TRAIN_SIZES = {1: 23, 2: 47, 3: 6}  # exact training-set sizes, never sent
SITE_VALUE = {1: 1.0, 2: -2.0, 3: 10.0}  # each site sets every weight to its value


class ConstantTask:
    """A site's "training" sets every weight to its own value and reports its training-set size."""

    def init_model(self, run_config):
        torch.manual_seed(0)
        return nn.Linear(3, 2)

    def local_train(self, model, site_data_dir: Path, run_config, global_model):
        node = int(site_data_dir.name[1:])
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(SITE_VALUE[node])
        return TRAIN_SIZES[node], {"train_loss": 0.1 * node}

    def local_evaluate(self, model, site_data_dir: Path, run_config):
        return 20, {"loss": 0.5}


register_task("constanttoy", ConstantTask())


def _train_grid(tmp_path, base=None):
    configs = {}
    for node in TRAIN_SIZES:
        d = tmp_path / f"s{node}"
        d.mkdir()
        configs[node] = {"image-root-constanttoy": str(d), "min-cell-count": MIN,
                         **({"fedavg-weight-base": base} if base else {})}
    app = ClientApp()
    app.train()(handle_train)
    app.evaluate()(handle_evaluate)
    return InProcessGrid(app, configs)


def test_released_weight_by_hand():
    assert [released_weight(n, 10) for n in (0, 1, 4, 5, 14, 15, 23, 47, 995)] == [0, 10, 10, 10, 10, 20, 20, 50, 1000]
    assert released_weight(23, 25) == 25 and released_weight(38, 25) == 50
    from optima_common.disclosure.rounding import (
        rounded,  # the project's nearest_<b> rounding agrees
    )

    assert all(released_weight(n, b) == int(rounded(float(n), b)) for n in range(0, 300) for b in (5, 10, 25))


@pytest.mark.parametrize("base", [None, 25])
def test_fedavg_weights_are_rounded_sizes_and_fedavg_is_their_weighted_mean(tmp_path, base):
    grid = _train_grid(tmp_path, base)
    summary = run_federated_training(grid, "constanttoy", rounds=2, run_config={}, out_dir=tmp_path / "o",
                                     min_replies=3, round_timeout=30)
    b = base or 10
    want = {node: b * max(1, int(np.floor(n / b + 0.5))) for node, n in TRAIN_SIZES.items()}
    assert want == ({1: 20, 2: 50, 3: 10} if b == 10 else {1: 25, 2: 50, 3: 25})
    train = [rep for rep in grid.received if rep.metadata.group_id.startswith("train-")]
    assert len(train) == 6
    for rep in train:  # attacker: no scalar of a train reply is the exact size
        m = dict(rep.content.metric_records["metrics"])
        node = rep.metadata.src_node_id
        assert m["num-examples"] == want[node]  # the same in both rounds of the run
        assert TRAIN_SIZES[node] not in [round(v) for v in m.values()]
        assert check_reply(training_table(m["num-examples"], b), MIN) == []
    total = sum(want.values())
    assert all(r.num_examples == total for r in summary.rounds)
    # FedAvg by hand with the released weights (not the exact sizes)
    expect = sum(want[n] * SITE_VALUE[n] for n in want) / total
    exact = sum(TRAIN_SIZES[n] * SITE_VALUE[n] for n in want) / sum(TRAIN_SIZES.values())
    assert abs(expect - exact) > 0.1  # the two differ, so the check can tell them apart
    arrays = load_checkpoint(tmp_path / "o" / summary.final_checkpoint)
    for v in arrays.values():
        np.testing.assert_allclose(v, expect, rtol=1e-6)
    # the train metrics are weighted by the released weights too
    loss = sum(want[n] * 0.1 * n for n in want) / total
    assert abs(summary.rounds[0].train_metrics["train_loss"] - loss) < 1e-9


def test_reply_types_are_declared_and_an_undeclared_one_is_refused():
    assert D.undeclared([EVALUATION, TRAINING]) == []
    table = training_table(20, 10)
    assert check_release(table, MIN) == []
    renamed = table.with_data(table.data, table.settings.assign(result_type="model_something_new"))
    assert "declare no relations" in check_release(renamed, MIN)[0]
    # a weight that is not rounded to at least the minimum is a small count
    assert "between 1 and 4" in check_release(training_table(3, 10), MIN)[0]


def _holds(table):
    """Every declared relation holds on the (unsuppressed) truth and the system is not empty."""
    f = audit_frame(table)
    built = D.build_system(f)
    p = A.problem(f, built, f["num"].to_numpy())
    before = len(p.rel)
    A.fill_hidden_truth(p)
    assert len(p.rel) == before, "a declared relation does not hold on the true counts"
    return built.system


def test_declared_relations_hold_on_true_replies():
    rng = np.random.default_rng(5)
    # a binary (mammography stage 1) reply: matrix, histogram, n; and stage 2 on the malignant cases
    y, s = _split(rng, 40, 6, 7, 30)
    m = summary_metrics(classification_metrics(y, np.c_[1 - s, s], ["benign", "malignant"]))
    raw = {f"stage1_{k}": v for k, v in m.items()}
    raw.update(H.to_metrics("stage1_", *H.histogram(y, s)))
    y2 = rng.integers(0, 4, 33)  # 33 of the 37 malignant cases have a subtype
    p2 = rng.dirichlet(np.ones(4), 33)
    raw.update({f"stage2_{k}": v for k, v in summary_metrics(classification_metrics(
        y2, p2, ["a", "b", "c", "d"])).items()})
    system = _holds(reply_table({**raw, "num-examples": len(y)}))
    labels = " ".join(system.labels)
    for what in ("cells add up to n", "histogram class 1", "truth 1 predicted 0", "stage 2 cells"):
        assert what in labels, what
    # an 8-class pathology reply with a Tumor-score histogram (Tumor is class 0)
    y8 = rng.integers(0, 8, 120)
    p8 = rng.dirichlet(np.ones(8), 120)
    m8 = summary_metrics(classification_metrics(y8, p8, [f"c{i}" for i in range(8)]))
    m8.update(H.to_metrics("tumor_", *H.histogram(y8 == 0, p8[:, 0])))
    system = _holds(reply_table({**m8, "num-examples": 120}))
    assert "evaluation tumor: histogram class 1 = matrix rows of class 0" in system.labels


def _interval(table, row: int) -> tuple[float, float]:
    f = audit_frame(table)
    p = A.problem(f, D.build_system(f))
    lb, ub, _ = A.bounds(p, f["suppressed"].to_numpy(), minimum=MIN)
    want = np.zeros(p.n_var, dtype=bool)
    want[row] = True
    iv = solve.intervals(p.rel, p.var, p.coef, p.built.system.n_rel, lb, ub, want, want)
    return float(iv.lo[row]), float(iv.hi[row])


def test_attacker_on_received_evaluate_replies(tmp_path):
    """Only what the coordinator received: every reply passes the audit, and site 2's withheld
    2x2 test matrix (2 false negatives) is bounded no tighter than [<= 1, >= min - 1] cell by cell."""
    grid, _ = eval_grid(tmp_path)
    run_federated_training(grid, "binarytoy", rounds=1, run_config={}, out_dir=tmp_path / "o", min_replies=3,
                           round_timeout=30)
    replies = [rep for rep in grid.received if rep.metadata.group_id.startswith("evaluate")]
    assert len(replies) == 3
    for rep in replies:
        m = dict(rep.content.metric_records["metrics"])
        table = reply_table(m, site=f"s{rep.metadata.src_node_id}")
        assert check_reply(table, MIN) == []
        if rep.metadata.src_node_id != 2:
            continue
        d = table.data
        cells = d[(d["group_level"] == "stage1") & (d["variable_name"] == "confusion")]
        assert len(cells) == 4 and (cells["estimate_value"] == "-").all()
        truth = dict(zip(("0_0", "0_1", "1_0", "1_1"), EVAL_SITES[2][0]))
        for idx, level in zip(cells.index, cells["variable_level"]):
            lo, hi = _interval(table, int(idx))
            assert lo <= truth[level] <= hi
            assert lo <= 1 and hi >= MIN - 1 or lo >= MIN, (level, lo, hi)
        fn = int(cells.index[cells["variable_level"] == "1_0"][0])
        lo, hi = _interval(table, fn)
        assert lo == 0 and hi >= MIN  # the 2 false negatives hide in [0, >= min]


def test_audit_catches_what_the_relations_pin():
    """The audit is not toothless: a matrix with only its 2 false negatives withheld is pinned by
    the released histogram's class total (the declared relation); the raw single-bin histogram
    shows small counts; metrics of a withheld matrix are named."""
    rng = np.random.default_rng(1)
    y, s = _split(rng, 30, 6, 2, 30)
    cm = {"stage1_cm_0_0": 30.0, "stage1_cm_0_1": 6.0, "stage1_cm_1_0": 2.0, "stage1_cm_1_1": 30.0}
    _, hist = release_evaluation(len(y), {**H.to_metrics("stage1_", *H.histogram(y, s))}, MIN)
    table = reply_table({**hist, **cm, "num-examples": len(y)})
    d = table.data.copy()
    fn = (d["variable_name"] == "confusion") & (d["variable_level"] == "1_0")
    d.loc[fn, "estimate_value"] = "-"
    problems = check_reply(table.with_data(d), MIN)
    assert problems and "narrowed" in problems[0] and "[2, 2]" in problems[0], problems
    raw = {**H.to_metrics("stage1_", *H.histogram(y, s)), "stage1_cm_withheld": 1.0, "num-examples": len(y)}
    assert "between 1 and 4" in check_reply(reply_table(raw), MIN)[0]
    leak = {**hist, "stage1_cm_withheld": 1.0, "stage1_accuracy": 0.9, "num-examples": len(y)}
    assert any("withheld matrix" in p for p in check_reply(reply_table(leak), MIN))


def test_random_released_binary_replies_pass_the_audit():
    """Many random binary splits through the site's own reply builder: every reply passes the
    audit; where the released histogram would pin a cell of a withheld matrix (e.g. TN 4, FP 4,
    FN 20, TP 9: class 1's intervals happen to meet at 0.5), the histogram is withheld too."""
    from site_agent.training.federated import evaluate_reply_metrics

    rng = np.random.default_rng(11)
    tried = fallback = 0
    for cells, y, metrics in random_binary_replies(rng, 40):
        out = dict(evaluate_reply_metrics(len(y), metrics, {"min-cell-count": MIN}))
        table = reply_table(out, n_classes={"k_": 2})
        assert check_reply(table, MIN) == [], (cells, out)
        _, plain = release_evaluation(len(y), metrics, MIN)
        if "k_hist_withheld" in out and "k_hist_withheld" not in plain:
            fallback += 1
            assert check_reply(reply_table({**plain, "num-examples": len(y)}, n_classes={"k_": 2}), MIN)
        tried += 1
    assert tried > 30 and fallback >= 1
