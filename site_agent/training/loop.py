"""Train and predict: Adam/SGD, cross-entropy, rotation/flip augmentation, early stopping on the
validation loss, the best checkpoint written atomically and reloaded, then its BatchNorm
statistics re-estimated on the training data (:func:`recalibrate_bn`) so that eval mode agrees
with the fine-tuned weights; bf16 autocast and channels_last on a GPU; FedProx's proximal term
when a global model is given.

Datasets are plain torch Datasets yielding ``(tensor CxHxW float in [0, 1], int label)``.
"""

from __future__ import annotations

import io
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader, Dataset

from optima_common.errors import ConfigError
from optima_common.fileio import write_atomic


class TrainConfig(BaseModel):
    """Settings of one local training run (also what a federated round sends to a site)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(3, ge=1)
    device: Literal["cpu", "cuda", "auto"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    seed: int = 0
    fedprox_mu: float = Field(0.0, ge=0)
    num_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    augment: bool = True
    # re-estimate BatchNorm statistics on the training data (no augmentation) once the best epoch
    # is loaded, so eval mode matches the fine-tuned weights; 0 batches: off
    bn_recalibration_batches: int = Field(200, ge=0)


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    val_loss: float | None
    seconds: float


class FitResult(BaseModel):
    history: list[EpochRecord]
    best_epoch: int
    best_val_loss: float | None
    examples_seen: int
    seconds: float
    stopped_early: bool


@dataclass
class Predictions:
    probs: np.ndarray  # (N, C) softmax probabilities
    labels: np.ndarray  # (N,) int labels the dataset gave
    embeddings: np.ndarray | None = None  # (N, D) penultimate features when asked for


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU", hint="use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random multiples of 90° rotation and a random horizontal flip, per image (label-preserving
    for tissue patches, which have no up or down)."""
    k = torch.randint(0, 4, (x.shape[0],), generator=generator)
    flip = torch.randint(0, 2, (x.shape[0],), generator=generator).bool()
    out = torch.empty_like(x)
    for rot in range(4):
        for f in (False, True):
            sel = ((k == rot) & (flip == f)).nonzero().flatten()
            if len(sel):
                sel = sel.to(x.device)
                part = torch.rot90(x[sel], rot, dims=(2, 3))
                out[sel] = part.flip(3) if f else part
    return out  # empty_like keeps x's memory format (channels_last stays channels_last)


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _loader(ds: Dataset, cfg: TrainConfig, *, shuffle: bool, device: torch.device) -> DataLoader:
    gen = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=cfg.num_workers,
                      generator=gen if shuffle else None, pin_memory=device.type == "cuda",
                      persistent_workers=cfg.num_workers > 0, drop_last=False)


def _to(x: torch.Tensor, device: torch.device, cfg: TrainConfig) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last and x.dim() == 4 else x


def _proximal(model: nn.Module, global_params: dict[str, torch.Tensor]) -> torch.Tensor:
    terms = [(p - global_params[n]).pow(2).sum() for n, p in model.named_parameters()
             if p.requires_grad and n in global_params]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _global_tensors(global_params, device) -> dict[str, torch.Tensor]:
    if isinstance(global_params, nn.Module):
        global_params = dict(global_params.named_parameters())
    return {k: v.detach().to(device).float() for k, v in dict(global_params).items()}


def evaluate_loss(model: nn.Module, ds: Dataset, cfg: TrainConfig, device: torch.device) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad(), _autocast(device, cfg.precision):
        for x, y in _loader(ds, cfg, shuffle=False, device=device):
            logits = model(_to(x, device, cfg)).float()
            total += nn.functional.cross_entropy(logits, y.to(device), reduction="sum").item()
            n += len(y)
    return total / max(n, 1)


_BN = nn.modules.batchnorm._BatchNorm


def recalibrate_bn(model: nn.Module, ds: Dataset, cfg: TrainConfig, device: torch.device,
                   max_batches: int | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the exact (cumulative)
    average over up to ``max_batches`` training batches, un-augmented, with the model's weights
    fixed ("precise BN"). Other layers stay in eval mode (no dropout). Returns images seen."""
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not bns or len(ds) == 0:
        return 0
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
        m.train()
    seen = 0
    try:
        with torch.no_grad(), _autocast(device, cfg.precision):
            for step, (x, _) in enumerate(_loader(ds, cfg, shuffle=True, device=device)):
                if max_batches is not None and step >= max_batches:
                    break
                model(_to(x, device, cfg))
                seen += len(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    return seen


def save_state(model: nn.Module, path: Path) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    write_atomic(path, buf.getvalue())


def fit(model: nn.Module, train_ds: Dataset, val_ds: Dataset | None, cfg: TrainConfig, checkpoint: Path,
        global_params=None) -> FitResult:
    """Train ``model`` in place; the best epoch (lowest validation loss, or training loss when
    there is no validation set) is saved to ``checkpoint`` and loaded back at the end."""
    if len(train_ds) == 0:
        raise ConfigError("the training set is empty", hint="check the data folder and its annotations")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adam"
           else torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay))
    prox = _global_tensors(global_params, device) if cfg.fedprox_mu > 0 and global_params is not None else None
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    has_val = val_ds is not None and len(val_ds) > 0
    history, best, best_epoch, seen, bad = [], math.inf, 0, 0, 0
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total, n = 0.0, 0
        for step, (x, y) in enumerate(_loader(train_ds, cfg, shuffle=True, device=device)):
            if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
                break
            x, y = _to(x, device, cfg), y.to(device)
            if cfg.augment:  # on the device: a CPU-side copy would cap GPU throughput
                x = augment_batch(x, aug_gen)
            with _autocast(device, cfg.precision):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            objective = loss + cfg.fedprox_mu / 2 * _proximal(model, prox) if prox is not None else loss
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            total = total + loss.detach().float() * len(y)  # no per-step host sync on a GPU
            n += len(y)
        seen += n
        train_loss = float(total) / max(n, 1)
        val_loss = evaluate_loss(model, val_ds, cfg, device) if has_val else None
        history.append(EpochRecord(epoch=epoch, train_loss=train_loss, val_loss=val_loss,
                                   seconds=time.perf_counter() - t0))
        score = val_loss if has_val else train_loss
        if score < best:
            best, best_epoch, bad = score, epoch, 0
            save_state(model, checkpoint)
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_epoch == 0:
        raise ConfigError("the training loss is not a finite number (diverged)", hint="lower the learning rate")
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    model.load_state_dict(state)
    if cfg.bn_recalibration_batches:
        recalibrate_bn(model, train_ds, cfg, device, cfg.bn_recalibration_batches)
        save_state(model, checkpoint)
    return FitResult(history=history, best_epoch=best_epoch, best_val_loss=best if has_val else None,
                     examples_seen=seen, seconds=time.perf_counter() - start,
                     stopped_early=len(history) < cfg.epochs)


def predict(model: nn.Module, ds: Dataset, cfg: TrainConfig, *, embeddings: bool = False) -> Predictions:
    """Batched inference: softmax probabilities, the dataset's labels, optionally embeddings."""
    device = resolve_device(cfg.device)
    model.to(device).eval()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    probs, labels, embs = [], [], []
    with torch.no_grad(), _autocast(device, cfg.precision):
        for x, y in _loader(ds, cfg, shuffle=False, device=device):
            x = _to(x, device, cfg)
            if embeddings:
                feats = model.embed(x)
                logits = model.head(feats)
                embs.append(feats.float().cpu().numpy())
            else:
                logits = model(x)
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            labels.append(np.asarray(y))
    n_classes = model.head.out_features
    return Predictions(probs=np.concatenate(probs) if probs else np.zeros((0, n_classes), np.float32),
                       labels=np.concatenate(labels).astype(int) if labels else np.zeros(0, int),
                       embeddings=(np.concatenate(embs) if embs else None) if embeddings else None)
