"""The coordinator's re-audit of the sites' model replies before anything is pooled (numpy only).

A site audits every reply before it leaves (:mod:`site_agent.training.federated`), but the
coordinator does not take that on trust: every train and evaluate reply states the site's
policy (``policy-min-cell-count``, ``policy-fedavg-weight-base``:
:data:`optima_common.disclosure.model_replies.POLICY_KEYS`), and the coordinator checks

- the stated minimum cell count against the network's floor (``min_cell_floor`` of the
  training request); a site that states none, or one below the floor, is refused;
- train replies: the FedAvg weight ``num-examples`` is a whole multiple of the stated base, and
  the base is at least the stated minimum (so a weight is 0 or at least the minimum);
- evaluate replies: the same declared-relation audit the site ran
  (:func:`~optima_common.disclosure.model_replies.check_reply` on
  :func:`~optima_common.disclosure.model_replies.reply_table`, i.e. ``check_release`` with the
  ``model_evaluation`` relations) with the site's stated minimum. The coordinator does not know
  the size of a matrix the site withheld without a histogram, so it may see fewer withheld cells
  than the site did: fewer relations, never a stricter audit than the site's own.

A reply that fails is not pooled: it is returned as a one-line reason (``node N: refused at the
coordinator: ...``) that the round records under ``refused``.
"""

from __future__ import annotations

import logging

from flwr.app import Message

from optima_common.disclosure.model_replies import (
    NUM_EXAMPLES,
    POLICY_KEYS,
    POLICY_MIN_CELL,
    POLICY_WEIGHT_BASE,
    check_reply,
    reply_table,
)

log = logging.getLogger("coordinator.flower.training")

DEFAULT_FLOOR = 5  # the network's minimum cell count unless the training request says otherwise
MAX_REASON = 300


def _whole(v) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


def _min_cell(metrics: dict, floor: int) -> tuple[int | None, str | None]:
    if POLICY_MIN_CELL not in metrics:
        return None, "the reply states no minimum cell count"
    stated = _whole(metrics[POLICY_MIN_CELL])
    if stated is None:
        return None, f"its stated minimum cell count {metrics[POLICY_MIN_CELL]!r} is not a whole number"
    if stated < floor:
        return None, f"its stated minimum cell count {stated} is below the network's floor {floor}"
    return stated, None


def audit_train(metrics: dict, floor: int) -> str | None:
    """Why a train reply's scalars may not be pooled (None: they may)."""
    min_cell, why = _min_cell(metrics, floor)
    if why:
        return why
    base = _whole(metrics.get(POLICY_WEIGHT_BASE))
    if base is None or base < 1:
        return "the reply states no FedAvg weight base"
    if base < min_cell:
        return f"its FedAvg weight base {base} is below its minimum cell count {min_cell}"
    weight = metrics.get(NUM_EXAMPLES)
    whole = _whole(weight)
    if whole is None or whole < 0 or whole % base:
        return f"its FedAvg weight {weight!r} is not a multiple of its base {base} (an exact count)"
    return None


def audit_evaluation(metrics: dict, floor: int) -> str | None:
    """Why an evaluate reply's scalars may not be pooled (None: they may)."""
    min_cell, why = _min_cell(metrics, floor)
    if why:
        return why
    try:
        problems = check_reply(reply_table(without_policy(metrics)), min_cell)
    except (ValueError, KeyError, TypeError) as exc:  # a reply that cannot even be read as its table
        return f"the reply is not a readable model_evaluation table ({exc})"
    if problems:
        return f"the disclosure audit with its minimum cell count {min_cell} failed: {problems[0]}"
    return None


def without_policy(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in POLICY_KEYS}


def refusal(node, reason: str) -> str:
    return " ".join(f"node {node}: refused at the coordinator: {reason}".split())[:MAX_REASON]


def audit_replies(replies: list[Message], kind: str, floor: int) -> tuple[list[Message], list[str]]:
    """(the replies that pass, a one-line reason for each that does not); ``kind``: train/evaluate."""
    check = audit_train if kind == "train" else audit_evaluation
    ok, refused = [], []
    for rep in replies:
        record = rep.content.metric_records.get("metrics")
        why = "the reply carries no metrics" if record is None else check(dict(record), floor)
        if why is None:
            ok.append(rep)
        else:
            refused.append(refusal(rep.metadata.src_node_id, why))
            log.warning("%s", refused[-1])
    return ok, refused
