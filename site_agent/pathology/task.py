"""The federated "pathology" task: what a site does with a Flower train/evaluate message.

Registered with :func:`site_agent.training.federated.register_task` on import. Run configs
carry :class:`PathologyOptions` fields (unknown keys ignored). A site's tiles are computed
once per process and kept (keyed by folder and tiling), so rounds in one process re-use them.
Replies: weights plus scalar aggregates (losses, accuracy, macro F1/AUROC) — nothing per patch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from site_agent.pathology import CLASSES
from site_agent.pathology.dataset import SiteData, load_site
from site_agent.pathology.options import PathologyOptions
from site_agent.training.federated import register_task

_SITES: dict[tuple, SiteData] = {}


def site_data(data_dir: Path, opts: PathologyOptions) -> SiteData:
    key = (str(Path(data_dir).resolve()), opts.tiling(), opts.input_size, opts.seed, opts.train_stride)
    if key not in _SITES:
        _SITES[key] = load_site(Path(data_dir), opts.tiling(), input_size=opts.input_size, seed=opts.seed,
                                train_stride=opts.train_stride)
    return _SITES[key]


class PathologyTask:
    def init_model(self, run_config: dict):
        from site_agent.pathology.pipeline import build_model

        return build_model(PathologyOptions.from_run_config(run_config))

    def local_train(self, model, site_data_dir: Path, run_config: dict, global_model) -> tuple[int, dict]:
        import tempfile

        from site_agent.training.loop import fit

        opts = PathologyOptions.from_run_config(run_config)
        site = site_data(site_data_dir, opts)
        cfg = opts.train_config().model_copy(update={"seed": opts.seed + int(run_config.get("round", 0))})
        with tempfile.TemporaryDirectory(prefix="optima-fed-") as tmp:
            res = fit(model, site.datasets["train"], site.datasets["val"], cfg, Path(tmp) / "ck.pt",
                      global_params=global_model if opts.fedprox_mu > 0 else None)
        last = res.history[res.best_epoch - 1]
        metrics = {"train_loss": last.train_loss}
        if last.val_loss is not None:
            metrics["val_loss"] = last.val_loss
        return len(site.datasets["train"]), metrics

    def local_evaluate(self, model, site_data_dir: Path, run_config: dict) -> tuple[int, dict]:
        from site_agent.training.loop import predict
        from site_agent.training.metrics import classification_metrics, summary_metrics

        opts = PathologyOptions.from_run_config(run_config)
        site = site_data(site_data_dir, opts)
        ds = site.datasets["test"]
        if len(ds) == 0:  # never the validation split in its place
            from optima_common.errors import TestSplitError

            raise TestSplitError(f"the pathology test split at {site_data_dir} is empty: no metrics to report")
        from optima_common import score_histogram as H

        pred = predict(model, ds, opts.train_config())
        m = summary_metrics(classification_metrics(pred.labels, pred.probs, list(CLASSES)))
        # Tumor against the rest: histograms of the Tumor score (pooled AUROC at the coordinator)
        m.update(H.to_metrics("tumor_", *H.histogram(pred.labels == 0, pred.probs[:, 0])))
        if len(site.datasets["val"]):  # the validation split chooses the round
            val = predict(model, site.datasets["val"], opts.train_config())
            vm = summary_metrics(classification_metrics(val.labels, val.probs, list(CLASSES)))
            m.update({f"val_{k}": v for k, v in vm.items()})
            m.update(H.to_metrics("val_tumor_", *H.histogram(val.labels == 0, val.probs[:, 0])))
        m["loss"] = float(-np.mean(np.log(np.clip(pred.probs[np.arange(len(pred.labels)), pred.labels], 1e-12, 1))))
        return len(ds), m


register_task("pathology", PathologyTask())
