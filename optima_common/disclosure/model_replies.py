"""What a site sends in federated training rounds, as released tables with declared relations.

A Flower train or evaluate reply carries a ``MetricRecord`` of scalars (plus, for train, the
model weights, which the DP and SecAgg+ layers cover). The counts in those scalars are released
counts like any other table's, so they pass the same disclosure system: :func:`reply_table`
writes a reply's scalars as a :class:`~optima_common.results.SummarisedResult` of two result
types, declared here, and :func:`check_reply` runs :func:`optima_common.disclosure.check_release`
on it (a result type without declared relations is refused there like any other). The site
checks every reply before it leaves (``site_agent.training.federated``); an attacker test reads
only what the coordinator receives (``tests/test_model_replies.py``).

``model_training_weight`` (train replies): ``num-examples``, the FedAvg weight, is the site's
training-set size rounded to the nearest multiple of the site's base ``b`` (at least ``b``;
``count_rounding = nearest_<b>``, :func:`optima_common.eval_release.released_weight`). The
training set does not change within a run, so the weight is the same in every round of a run.
No relations (a single total).

``model_evaluation`` (evaluate replies), one group per evaluation prefix (``test`` for ``""``,
``stage1``, ``val_stage1``, ``tumor``, ...): the confusion cells (variable ``confusion``, level
``i_j``: truth i, prediction j), the score histogram's released intervals (variable
``score_histogram``, level ``c_lo_hi``: cases of class c with score bin in [lo, hi) of
:data:`~optima_common.score_histogram.FINE`), ``number examples`` (group ``reply``: the test
split's size), site-computed metrics (non-counts) and the withheld flags. A withheld matrix is
written as withheld cells ("-") when its size is known (a binary group, or ``n_classes``).
Declared relations, all exact on the site's true counts:

1. the test group's cells (group ``test``, else ``stage1``) add up to ``number examples``;
2. a histogram scores one class of one matrix: prefix ``<g>`` scores class 1 of group ``<g>``
   (binary), ``<g>tumor_`` class 0 (Tumor) of group ``<g>``; its class-1 intervals add up to
   that row of the matrix, its class-0 intervals to the other rows;
3. binary groups (2x2 matrix and its own histogram, prediction = score >= 0.5): truth c
   predicted 0 = class c's intervals below 0.5 + the part below 0.5 of an interval across it,
   predicted 1 likewise above (the two parts of an interval across 0.5 are protected counts);
4. mammography: the stage 2 cells (malignant ROIs with a subtype) add up to at most stage 1's
   malignant row (the malignant ROIs without a subtype protected).

Metrics derived from a withheld matrix (accuracy, precision, recall, F1, AUROC of its group)
must not be released: :func:`check_reply` says so when they are.

Every train and evaluate reply also states the site's disclosure policy (not data):
``policy-min-cell-count`` and ``policy-fedavg-weight-base`` (:data:`POLICY_KEYS`), so that the
coordinator can run the same audit on what it receives
(:mod:`coordinator.flower.reply_audit`). They are not part of the released table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from optima_common import score_histogram as H
from optima_common.disclosure import system as S
from optima_common.disclosure.frame import count_rows
from optima_common.eval_release import (
    CM_WITHHELD,
    HEADLINE,
    HIST_WITHHELD,
    cm_groups,
    is_flag,
)
from optima_common.results import SUPPRESSED, SummarisedResult

TRAINING, EVALUATION = "model_training_weight", "model_evaluation"
NUM_EXAMPLES = "num-examples"
REPLY_GROUP = "reply"
_PKG = ("optima_federated", "1")
POLICY_MIN_CELL, POLICY_WEIGHT_BASE = "policy-min-cell-count", "policy-fedavg-weight-base"
POLICY_KEYS = (POLICY_MIN_CELL, POLICY_WEIGHT_BASE)


def group_name(prefix: str) -> str:
    return prefix[:-1] if prefix.endswith("_") else (prefix or "test")


def group_prefix(level: str) -> str:
    return "" if level == "test" else f"{level}_"


def hist_target(hist_prefix: str) -> tuple[str, int]:
    """(confusion-matrix prefix, the row its class 1 is) that a histogram prefix scores."""
    if hist_prefix.endswith("tumor_"):
        return hist_prefix[: -len("tumor_")], 0
    return hist_prefix, 1


def _row(site, group, variable, level, estimate, value, rid, etype="integer"):
    return {"result_id": rid, "cdm_name": site, "group_name": "evaluation_group", "group_level": group,
            "strata_name": "overall", "strata_level": "overall", "variable_name": variable,
            "variable_level": level, "estimate_name": estimate, "estimate_type": etype,
            "estimate_value": value, "additional_name": "overall", "additional_level": "overall"}


def _fmt(v: float) -> str:
    return str(int(round(v))) if float(v).is_integer() else f"{float(v):.10g}"


def training_table(weight: float, base: int, site: str = "site") -> SummarisedResult:
    """A train reply's FedAvg weight as a released, rounded count."""
    row = _row(site, REPLY_GROUP, "number examples", None, "count", _fmt(weight), 1)
    settings = {"result_id": 1, "result_type": TRAINING, "package_name": _PKG[0], "package_version": _PKG[1],
                "count_rounding": f"nearest_{int(base)}"}
    return SummarisedResult.from_records([row], [settings])


def reply_table(metrics: dict, site: str = "site", n_classes: dict[str, int] | None = None) -> SummarisedResult:
    """An evaluate reply's scalars (``num-examples`` included) as a ``model_evaluation`` table.

    ``n_classes``: {prefix: classes} of matrices whose size is known although they were withheld
    (binary groups with a histogram of the same prefix are known to be 2x2)."""
    rows = []
    m = {k: v for k, v in metrics.items() if k not in POLICY_KEYS}  # the site's policy, not data
    if NUM_EXAMPLES in m:
        rows.append(_row(site, REPLY_GROUP, "number examples", None, "count", _fmt(m.pop(NUM_EXAMPLES)), 1))
    cms, hists = cm_groups(m), H.parse(m)
    sizes = dict(n_classes or {})
    for p in hists:
        sizes.setdefault(p, 2)
    used = {f"{p}cm_{i}_{j}" for p, cells in cms.items() for i, j in cells}
    for p, cells in sorted(cms.items()):
        for (i, j), v in sorted(cells.items()):
            rows.append(_row(site, group_name(p), "confusion", f"{i}_{j}", "count", _fmt(v), 1))
    for key in (k for k in m if k.endswith(CM_WITHHELD)):
        p = key[: -len(CM_WITHHELD)]
        if p in sizes and p not in cms:
            k = sizes[p]
            rows += [_row(site, group_name(p), "confusion", f"{i}_{j}", "count", SUPPRESSED, 1)
                     for i in range(k) for j in range(k)]
    for p, cells in sorted(hists.items()):
        rows += [_row(site, group_name(p), "score_histogram", f"{c}_{lo}_{hi}", "count", str(n), 1)
                 for c, lo, hi, n in cells]
    used |= {k for k in m if H.TAG in k}
    for key, v in sorted(m.items()):
        if key in used:
            continue
        if is_flag(key):
            flag = CM_WITHHELD if key.endswith(CM_WITHHELD) else HIST_WITHHELD
            rows.append(_row(site, group_name(key[: -len(flag)]), "withheld", flag, "flag", _fmt(v), 1))
            continue
        head = next((h for h in HEADLINE if key.endswith(h) and (key == h or key[: -len(h)].endswith("_"))), None)
        p, name = (key[: -len(head)], head) if head else ("", key)
        rows.append(_row(site, group_name(p), "metric", None, name, _fmt(v), 1, "numeric"))
    settings = {"result_id": 1, "result_type": EVALUATION, "package_name": _PKG[0], "package_version": _PKG[1]}
    return SummarisedResult.from_records(rows, [settings])


# ----------------------------------------------------------------------------- relations

def _cells(f: pd.DataFrame, variable: str) -> pd.DataFrame:
    c = count_rows(f, EVALUATION)
    return c[c["variable_name"] == variable]


def evaluation(f, s, co):
    """The relations 1-4 of the module text."""
    cm = _cells(f, "confusion")
    ij = cm["variable_level"].str.split("_", expand=True) if len(cm) else pd.DataFrame(columns=[0, 1])
    cm = cm.assign(i=pd.to_numeric(ij[0]).astype(int) if len(cm) else [],
                   j=pd.to_numeric(ij[1]).astype(int) if len(cm) else [])
    groups = {g: d for g, d in cm.groupby("group_level", sort=True)}
    # 1. the test split's cells add up to its number of examples
    n = count_rows(f, EVALUATION)
    n = n[(n["group_level"] == REPLY_GROUP) & (n["variable_name"] == "number examples")]
    test = groups.get("test", groups.get("stage1"))
    if len(n) == 1 and test is not None:
        S.sum_equals(s, pd.DataFrame({"key": "n", "row": test["row"].to_numpy()}),
                     pd.DataFrame({"key": ["n"], "row": [int(n["row"].iat[0])]}), "evaluation: cells add up to n")
    hist = _cells(f, "score_histogram")
    parts = hist["variable_level"].str.split("_", expand=True) if len(hist) else None
    if parts is not None:
        hist = hist.assign(c=pd.to_numeric(parts[0]).astype(int), lo=pd.to_numeric(parts[1]).astype(int),
                           hi=pd.to_numeric(parts[2]).astype(int))
    for level, h in (hist.groupby("group_level", sort=True) if parts is not None else []):
        target, pos = hist_target(group_prefix(level))
        g = groups.get(group_name(target))
        if g is None:
            continue
        # 2. class totals of the histogram = rows of the matrix
        for c, rows_mask in ((1, g["i"] == pos), (0, g["i"] != pos)):
            cells, ints = g[rows_mask], h[h["c"] == c]
            if len(cells) and len(ints):
                s.add(np.zeros(len(cells) + len(ints)), np.r_[cells["row"].to_numpy(), ints["row"].to_numpy()],
                      np.r_[np.ones(len(cells)), -np.ones(len(ints))], 1,
                      f"evaluation {level}: histogram class {c} = matrix rows of {'' if c else 'not '}class {pos}")
        # 3. binary: the prediction side of each class from the histogram
        if target == group_prefix(level) and set(zip(g["i"], g["j"])) <= {(0, 0), (0, 1), (1, 0), (1, 1)}:
            half = H.FINE // 2
            cell = {(i, j): r for i, j, r in zip(g["i"], g["j"], g["row"])}
            for c in (0, 1):
                ints = h[h["c"] == c]
                below = ints[ints["hi"] <= half]["row"].to_numpy()
                above = ints[ints["lo"] >= half]["row"].to_numpy()
                across = ints[(ints["lo"] < half) & (ints["hi"] > half)]["row"].to_numpy()
                split = s.new_hidden(2 * len(across), protect=True).reshape(-1, 2) if len(across) else np.zeros((0, 2), int)
                for r, (b, a) in zip(across, split):
                    s.add(np.zeros(3), [r, b, a], [1.0, -1.0, -1.0], 1,
                          f"evaluation {level}: an interval across 0.5 = its part below + its part above")
                for j, side, part in ((0, below, split[:, 0]), (1, above, split[:, 1])):
                    if (c, j) in cell:
                        vs = np.r_[cell[(c, j)], side, part].astype(np.int64)
                        s.add(np.zeros(len(vs)), vs, np.r_[1.0, -np.ones(len(vs) - 1)], 1,
                              f"evaluation {level}: truth {c} predicted {j} = class {c} "
                              f"{'below' if j == 0 else 'at or above'} 0.5")
    # 4. mammography: stage 2 (malignant ROIs with a subtype) <= stage 1's malignant row
    st1, st2 = groups.get("stage1"), groups.get("stage2")
    if st1 is not None and st2 is not None and (st1["i"] == 1).any():
        slack = s.new_hidden(1, protect=True)
        mal = st1[st1["i"] == 1]["row"].to_numpy()
        vs = np.r_[st2["row"].to_numpy(), slack, mal].astype(np.int64)
        s.add(np.zeros(len(vs)), vs, np.r_[np.ones(len(st2) + 1), -np.ones(len(mal))], 1,
              "evaluation: stage 2 cells <= stage 1 malignant row (malignant without subtype protected)")


def no_relations(f, s, co):
    """A single rounded total."""


DECLARATIONS = {EVALUATION: evaluation, TRAINING: no_relations}


def check_reply(table: SummarisedResult, min_cell_count: int) -> list[str]:
    """:func:`optima_common.disclosure.check_release` plus: no metric of a group whose matrix was withheld."""
    from optima_common.disclosure import check_release

    problems = check_release(table, min_cell_count)
    d = table.data
    withheld = set(d.loc[(d["variable_name"] == "withheld") & (d["variable_level"] == CM_WITHHELD), "group_level"])
    leak = d[(d["variable_name"] == "metric") & d["group_level"].isin(withheld) & d["estimate_name"].isin(HEADLINE)]
    if len(leak):
        r = leak.iloc[0]
        problems.append(f"{len(leak)} metric(s) of a withheld matrix released, e.g. {r['group_level']} "
                        f"{r['estimate_name']}")
    return problems
