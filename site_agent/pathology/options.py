"""Settings of a pathology training run (local CLI and federated rounds share them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from site_agent.pathology.tiling import TilingParams
from site_agent.training.models import BACKBONES


class PathologyOptions(BaseModel):
    """Defaults are sized so a synthetic site (12 slides) trains within 10 minutes on 2 CPU
    cores: a pretrained EfficientNet-Lite0 on 256 px patches resized to 112 px."""

    model_config = ConfigDict(extra="forbid")

    backbone: Literal[BACKBONES] = "efficientnet_lite0"  # type: ignore[valid-type]
    weights: Path | None = None  # local state dict for the backbone or the whole model
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    patience: int = Field(3, ge=1)
    input_size: int = Field(112, ge=16)  # model input side; patches are resized to it
    patch_size: int = Field(256, ge=32)
    downsample: float = Field(1.0, ge=1.0)  # level-0 pixels per patch pixel (magnification)
    mpp: float | None = Field(None, gt=0)  # microns per patch pixel: fixed physical resolution (overrides downsample)
    train_stride: int | None = Field(None, ge=16)  # overlap training patches (patch pixels)
    min_overlap: float = Field(0.5, gt=0, le=1)
    min_tissue: float = Field(0.5, ge=0, le=1)
    device: Literal["cpu", "cuda", "auto"] = "auto"
    precision: Literal["fp32", "bf16", "auto"] = "auto"  # auto: bf16 on a GPU, fp32 on CPU
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    fedprox_mu: float = Field(0.0, ge=0)
    gradcam_samples: int = Field(4, ge=0)
    tsne_max: int = Field(1500, ge=0)
    probe_encoder: Path | None = None  # linear probe: TorchScript encoder or state dict for probe_backbone
    probe_backbone: Literal[BACKBONES] = "resnet50"  # type: ignore[valid-type]

    def tiling(self) -> TilingParams:
        return TilingParams(size=self.patch_size, downsample=self.downsample, min_overlap=self.min_overlap,
                            min_tissue=self.min_tissue, mpp=self.mpp)

    def train_config(self):
        from site_agent.training.loop import TrainConfig, resolve_device

        gpu = resolve_device(self.device).type == "cuda"
        precision = ("bf16" if gpu else "fp32") if self.precision == "auto" else self.precision
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, patience=self.patience,
                           device=self.device, precision=precision, channels_last=gpu, seed=self.seed,
                           fedprox_mu=self.fedprox_mu, num_workers=self.num_workers,
                           max_steps_per_epoch=self.max_steps_per_epoch)

    @classmethod
    def from_run_config(cls, run_config: dict) -> PathologyOptions:
        """Options from a Flower run config (unknown keys such as task/round/init ignored)."""
        known = {k: v for k, v in run_config.items() if k in cls.model_fields}
        return cls(**known)
