"""Task "mammography" for the shared federated core (:mod:`site_agent.training.federated`).

What travels: the weights of both classification stages in one ArrayRecord (keys
``stage1.*`` and ``stage2.*``) and scalar aggregates. Detection stays site-local: each
site trains its own YOLO model with ``site-agent train mammography`` (boxes depend on the
site's scanner and its labelling; the classifier is where pooling helps most). Federated
rounds train the stages on ground-truth ROI crops of the site's train split and evaluate
on its held-out test split. BatchNorm statistics travel as moments (the shared handlers in
:mod:`site_agent.training.federated` convert them for every task; :func:`global_model` loads
a coordinator checkpoint). Run config keys (all optional): ``epochs`` (local epochs per
round), ``lr``, ``optimizer``, ``batch_size``, ``backbone``, ``roi_size``, ``device``,
``seed``, ``fedprox_mu``, ``max_steps_per_epoch``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from site_agent.imaging.classify import TwoStage
from site_agent.imaging.pipeline import MammoConfig, SiteImages, load_site
from site_agent.imaging.stages import evaluate_stage, train_stages
from site_agent.training.federated import bn_from_wire, bn_to_wire, register_task  # noqa: F401 (re-exported)

_SITES: dict[tuple, SiteImages] = {}
def global_model(arrays: dict, run_config: dict | None = None) -> TwoStage:
    """A usable TwoStage model from a coordinator checkpoint (numpy arrays in wire form)."""
    import numpy as np
    import torch

    model = TwoStage(config_from_run(run_config or {}).backbone)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
    return bn_from_wire(model)  # preprocessed sites kept across rounds in one process


def config_from_run(run_config: dict) -> MammoConfig:
    device = str(run_config.get("device", "auto"))
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = MammoConfig.for_device(device)
    update = {k: run_config[k] for k in ("lr", "optimizer", "batch_size", "backbone", "roi_size", "seed", "weights")
              if k in run_config}
    cfg = MammoConfig.model_validate({**cfg.model_dump(), **update})
    return cfg


def _site(path: Path, cfg: MammoConfig) -> SiteImages:
    key = (str(Path(path).resolve()), cfg.seed, cfg.preprocess.model_dump_json())
    if key not in _SITES:
        _SITES[key] = load_site(Path(path), cfg)
    return _SITES[key]


class MammographyTask:
    def init_model(self, run_config: dict) -> nn.Module:
        cfg = config_from_run(run_config)
        return TwoStage(cfg.backbone, cfg.weights)  # same default as local training

    def local_train(self, model: nn.Module, site_data_dir: Path, run_config: dict,
                    global_model: nn.Module) -> tuple[int, dict]:
        cfg = config_from_run(run_config)
        site = _site(site_data_dir, cfg)
        epochs = int(run_config.get("epochs", 1))
        mu = float(run_config.get("fedprox_mu", 0.0))
        tcfg_extra = {"fedprox_mu": mu, "max_steps_per_epoch": run_config.get("max_steps_per_epoch")}
        with tempfile.TemporaryDirectory(prefix="mammo-fl-") as tmp:
            _, fits = train_stages(site, _WithTrainExtras(cfg, tcfg_extra), Path(tmp), epochs=epochs, model=model,
                                   global_model=global_model if mu > 0 else None)
        metrics = {}
        for stage, fit in fits.items():
            last = fit.history[fit.best_epoch - 1] if fit.best_epoch else fit.history[-1]
            metrics[f"stage{stage}_train_loss"] = last.train_loss
            if last.val_loss is not None:
                metrics[f"stage{stage}_val_loss"] = last.val_loss
        return len(site.idx("train")), metrics

    def local_evaluate(self, model: nn.Module, site_data_dir: Path, run_config: dict) -> tuple[int, dict]:
        cfg = config_from_run(run_config)
        site = _site(site_data_dir, cfg)
        rois = site.rois("test")
        if not rois:  # never the validation split in its place
            from optima_common.errors import TestSplitError

            raise TestSplitError(f"the mammography test split at {site_data_dir} is empty: no metrics to report")
        cfg = cfg.model_copy(update={"bootstrap": 0, "min_test_patients": 1})  # pooled at the coordinator
        metrics = {}
        from optima_common import score_histogram as H

        for split, prefix in (("test", "stage1_"), ("val", "val_stage1_")):  # malignant-score histograms
            res = evaluate_stage(model, rois if split == "test" else site.rois("val"), 1, cfg)
            if len(res.labels):
                metrics.update(H.to_metrics(prefix, *H.histogram(res.labels, res.probs[:, 1])))
                if split == "val":
                    for i, row in enumerate(res.metrics["confusion_matrix"]):
                        for j, v in enumerate(row):
                            metrics[f"val_stage1_cm_{i}_{j}"] = float(v)
        for stage in (1, 2):
            m = evaluate_stage(model, rois, stage, cfg).metrics
            for k in ("accuracy", "precision", "recall", "f1", "auroc"):
                if m.get(k) is not None:
                    metrics[f"stage{stage}_{k}"] = m[k]
            for i, row in enumerate(m["confusion_matrix"]):  # the coordinator pools these
                for j, v in enumerate(row):
                    metrics[f"stage{stage}_cm_{i}_{j}"] = float(v)
        return len(rois), metrics


class _WithTrainExtras:
    """A MammoConfig whose TrainConfig also carries FedProx's mu and a step cap."""

    def __init__(self, cfg: MammoConfig, extra: dict):
        self._cfg, self._extra = cfg, {k: v for k, v in extra.items() if v is not None}

    def __getattr__(self, name):
        return getattr(self._cfg, name)

    def train_config(self, epochs: int | None = None):
        return self._cfg.train_config(epochs).model_copy(update=self._extra)


register_task("mammography", MammographyTask())
