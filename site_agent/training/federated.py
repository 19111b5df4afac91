"""Flower glue for image tasks: weights <-> ArrayRecord, a task registry, the train/evaluate handlers.

The lead's ``site_agent/client_app.py`` routes ``@app.train()`` and ``@app.evaluate()`` to
:func:`handle_train` and :func:`handle_evaluate`. A message's ``content["config"]`` (ConfigRecord)
names the ``task``; everything else in it is the task's run config. The site's data folder comes
from the SuperNode's node config: ``image-root-<task>`` (a path, for tests and the demo) or
``site-config`` (the site TOML, whose ``image_roots[task]`` is used).

Replies carry only the model weights (``ArrayRecord`` "arrays") and scalar aggregates
(``MetricRecord`` "metrics" with "num-examples", plus the site's policy: its minimum cell count
and weight base, :func:`site_policy`, which the coordinator re-audits the reply with): no image,
heatmap or embedding leaves the site.
A train reply's "num-examples" (the FedAvg weight) is the training-set size rounded to the
site's base (default 10), never the exact size. Both kinds of reply are written as the declared
tables of :mod:`optima_common.disclosure.model_replies` and audited before they leave.
An evaluate reply passes :func:`optima_common.eval_release.release_evaluation` first: confusion
matrices and score histograms with a cell between 1 and the site's minimum cell count are withheld.
A train message with ``init = True`` and no arrays answers with the task's freshly initialised,
seeded weights, so the coordinator never needs torch to build the starting model, plus a
ConfigRecord "model-info" whose ``trainable`` lists the keys of trainable parameters (the only
arrays that central DP clips and noises; buffers are averaged as they are).

BatchNorm statistics travel as moments for every task: ``running_var`` holds E[x^2] =
var + mean^2 on the wire, so the coordinator's plain mean of the sites' arrays gives the pooled
variance (between-site spread of the means included), which can never go negative
(:func:`bn_to_wire`, :func:`bn_from_wire`).

A train round with data is charged to the site's privacy ledger before training
(:mod:`site_agent.training.privacy`), which refuses it once the site's budget is spent.
"""

from __future__ import annotations

import copy
import importlib
import math
from pathlib import Path
from typing import Protocol

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from torch import nn

from optima_common import protocol as P
from optima_common.disclosure.model_replies import (  # imported with the app, not per reply
    POLICY_MIN_CELL,
    POLICY_WEIGHT_BASE,
    check_reply,
    hist_target,
    reply_table,
)
from optima_common.errors import ConfigError

# task name -> module whose import registers it (tasks register themselves on import)
TASK_MODULES: dict[str, str] = {"pathology": "site_agent.pathology.task",
                                "mammography": "site_agent.imaging.task"}


class TaskAdapter(Protocol):
    def init_model(self, run_config: dict) -> nn.Module: ...

    def local_train(self, model: nn.Module, site_data_dir: Path, run_config: dict,
                    global_model: nn.Module) -> tuple[int, dict]: ...

    def local_evaluate(self, model: nn.Module, site_data_dir: Path, run_config: dict) -> tuple[int, dict]: ...


_TASKS: dict[str, TaskAdapter] = {}


def register_task(name: str, adapter: TaskAdapter) -> None:
    _TASKS[name] = adapter


def get_task(name: str) -> TaskAdapter:
    if name not in _TASKS and name in TASK_MODULES:
        importlib.import_module(TASK_MODULES[name])
    if name not in _TASKS:
        raise ConfigError(f"unknown training task {name!r}", hint=f"known: {', '.join(sorted(set(_TASKS) | set(TASK_MODULES)))}")
    return _TASKS[name]


_BN = nn.modules.batchnorm._BatchNorm


def bn_to_wire(model: nn.Module) -> nn.Module:
    """running_var -> E[x^2] (in place), so that averaging the arrays pools the variances."""
    for m in model.modules():
        if isinstance(m, _BN) and m.track_running_stats:
            m.running_var.add_(m.running_mean.pow(2))
    return model


def bn_from_wire(model: nn.Module) -> nn.Module:
    """E[x^2] -> running_var (in place): var = E[x^2] - mean^2 (clamped at 0 against rounding)."""
    for m in model.modules():
        if isinstance(m, _BN) and m.track_running_stats:
            m.running_var.sub_(m.running_mean.pow(2)).clamp_(min=0.0)
    return model


def trainable_keys(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def model_to_arrays(model: nn.Module) -> ArrayRecord:
    return ArrayRecord(torch_state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()})


def arrays_to_model(model: nn.Module, arrays: ArrayRecord) -> nn.Module:
    state = arrays.to_torch_state_dict()
    mine = model.state_dict()
    if set(state) != set(mine):
        missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        raise ConfigError(f"received weights do not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
    model.load_state_dict({k: v.to(mine[k].dtype) for k, v in state.items()})
    return model


def site_data_dir(context: Context, task: str) -> Path:
    """The site's data folder for ``task`` from the SuperNode's node config."""
    direct = context.node_config.get(f"image-root-{task}")
    if direct:
        path = Path(str(direct))
    elif "site-config" in context.node_config:
        from site_agent.config import load_config

        cfg = load_config(str(context.node_config["site-config"]))
        if task not in cfg.image_roots:
            raise ConfigError(f"site config has no image_roots.{task}", hint=f"add [image_roots] {task} = \"DIR\"")
        path = Path(cfg.image_roots[task])
    else:
        raise ConfigError(f"node config names neither image-root-{task} nor site-config")
    if not path.is_dir():
        raise ConfigError(f"{task} data folder not found: {path}")
    return path


def site_min_cell(node_config) -> int:
    """The minimum cell count for released evaluation counts: node config ``min-cell-count``,
    else the site TOML's ``min_cell_count`` (``site-config``), else 5; never below 2."""
    if node_config.get("min-cell-count") is not None:
        value = int(node_config["min-cell-count"])
    elif node_config.get("site-config") and Path(str(node_config["site-config"])).is_file():
        from site_agent.config import load_config

        value = int(load_config(str(node_config["site-config"])).min_cell_count)
    else:
        value = 5
    return max(value, 2)


def site_policy(node_config) -> dict[str, int]:
    """The site's disclosure policy every train and evaluate reply states (not data): its minimum
    cell count and FedAvg weight base, so the coordinator can re-audit the reply with them."""
    from optima_common.eval_release import weight_base

    min_cell = site_min_cell(node_config)
    configured = node_config.get("fedavg-weight-base")
    return {POLICY_MIN_CELL: min_cell,
            POLICY_WEIGHT_BASE: weight_base(min_cell, int(configured) if configured is not None else None)}


def _run_config(msg: Message) -> tuple[str, dict]:
    if P.CONFIG_RECORD not in msg.content.config_records:
        raise ConfigError("message carries no config record")
    config = dict(msg.content.config_records[P.CONFIG_RECORD])
    task = config.get("task")
    if not isinstance(task, str):
        raise ConfigError("message config names no task")
    return task, config


def train_reply_metrics(num_examples: int, metrics: dict, node_config) -> MetricRecord:
    """A train reply's scalars: ``num-examples`` (the FedAvg weight) is the training-set size
    rounded to the site's base (:func:`optima_common.eval_release.released_weight`, node config
    ``fedavg-weight-base``, default 10, never below the minimum cell count). Its declared table
    (``model_training_weight``: one rounded count, no relations) passes the audit exactly when the
    weight is 0 or at least the minimum cell count, which is checked here without the LP."""
    from optima_common.errors import DisclosureError
    from optima_common.eval_release import released_weight

    policy = site_policy(node_config)
    min_cell, base = policy[POLICY_MIN_CELL], policy[POLICY_WEIGHT_BASE]
    weight = released_weight(int(num_examples), base)
    if 0 < weight < min_cell:
        raise DisclosureError(f"train reply refused: FedAvg weight {weight} is under the minimum cell count {min_cell}")
    return _metrics(weight, metrics, policy)


def evaluate_reply_metrics(num_examples: int, metrics: dict, node_config) -> MetricRecord:
    """An evaluate reply's scalars after :func:`optima_common.eval_release.release_evaluation`,
    checked as the declared ``model_evaluation`` table (withheld matrices of known size as
    withheld cells) before they leave. When the audit fails (the released histogram pins a cell
    of a withheld matrix, even a large one), the histograms of the withheld matrices are withheld
    too and the reply is audited again; a reply that still fails is refused, not sent."""
    from optima_common.errors import DisclosureError
    from optima_common.eval_release import cm_groups, release_evaluation

    min_cell = site_min_cell(node_config)
    sizes = {p: max(max(i, j) for i, j in cells) + 1 for p, cells in cm_groups(metrics).items() if cells}
    n, released = release_evaluation(num_examples, metrics, min_cell)  # small cells stay here
    record = _metrics(n, released)
    problems = check_reply(reply_table(dict(record), n_classes=sizes), min_cell)
    if problems:  # e.g. a withheld matrix whose large cells the histogram pins exactly: withhold it too
        from optima_common import score_histogram as H
        from optima_common.eval_release import CM_WITHHELD, HIST_WITHHELD

        hists = {p for p in H.parse(released) if f"{hist_target(p)[0]}{CM_WITHHELD}" in released}
        released = {k: v for k, v in released.items() if not any(k.startswith(f"{p}{H.TAG}") for p in hists)}
        released.update({f"{p}{HIST_WITHHELD}": 1.0 for p in hists})
        record = _metrics(n, released)
        problems = check_reply(reply_table(dict(record), n_classes=sizes), min_cell)
    if problems:
        raise DisclosureError(f"evaluate reply refused by the disclosure audit: {problems[0]}")
    return _metrics(n, released, site_policy(node_config))


def _metrics(num_examples: int, metrics: dict, policy: dict[str, int] | None = None) -> MetricRecord:
    """Only scalar numbers go back (aggregates), plus num-examples and the site's policy."""
    clean = {k: float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    clean["num-examples"] = int(num_examples)
    clean.update({k: int(v) for k, v in (policy or {}).items()})
    return MetricRecord(clean)


def _arrays(msg: Message) -> ArrayRecord | None:
    arrays = next(iter(msg.content.array_records.values()), None)
    return arrays if arrays is not None and len(arrays) else None


def _seed(config: dict) -> None:
    from site_agent.training.loop import seed_everything

    seed_everything(int(config.get("seed", 0)))


def _prepare(msg: Message):
    """Task name, run config, task adapter, a freshly built (seeded) model and the message's weights."""
    task, config = _run_config(msg)
    adapter = get_task(task)
    _seed(config)
    return task, config, adapter, adapter.init_model(config), _arrays(msg)


def handle_train(msg: Message, context: Context) -> Message:
    task, config, adapter, model, arrays = _prepare(msg)
    if arrays is None:
        if not config.get("init"):
            raise ConfigError("train message carries no weights (set init = true to ask for the initial model)")
        info = ConfigRecord({"trainable": trainable_keys(model)})
        return Message(RecordDict({"arrays": model_to_arrays(bn_to_wire(model)), "metrics": _metrics(0, {}),
                                   "model-info": info}), reply_to=msg)
    data_dir = site_data_dir(context, task)
    from site_agent.training.privacy import charge_round

    spent = charge_round(context.node_config, config, run_id=msg.metadata.run_id, task=task)
    bn_from_wire(arrays_to_model(model, arrays))
    global_model = copy.deepcopy(model)
    for p in global_model.parameters():
        p.requires_grad_(False)
    n, metrics = adapter.local_train(model, data_dir, config, global_model)
    if spent is not None:
        metrics = {**metrics, "site_epsilon_spent": spent}
    return Message(RecordDict({"arrays": model_to_arrays(bn_to_wire(model)),
                               "metrics": train_reply_metrics(n, metrics, context.node_config)}), reply_to=msg)


def handle_evaluate(msg: Message, context: Context) -> Message:
    task, config, adapter, model, arrays = _prepare(msg)
    if arrays is None:
        raise ConfigError("evaluate message carries no weights")
    bn_from_wire(arrays_to_model(model, arrays))
    n, metrics = adapter.local_evaluate(model, site_data_dir(context, task), config)
    return Message(RecordDict({"metrics": evaluate_reply_metrics(n, metrics, context.node_config)}), reply_to=msg)
