"""Two-stage ROI classification: stage 1 benign vs malignant, stage 2 the molecular subtype.

Both stages are classifiers of the shared training core (ResNet-50 by default, grayscale
input) held in one :class:`TwoStage` module, so a federated round exchanges both sets of
weights in one ArrayRecord (keys ``stage1.*`` and ``stage2.*``). ROI crops come from
ground-truth boxes for training (scale/crop augmentation: the box is jittered and the
context scaled; rotation and flip come from the core's batch augmentation) and from the
detector's boxes at test time.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from site_agent.imaging.clinical import SUBTYPES
from site_agent.imaging.preprocess import crop_roi

STAGE1_CLASSES = ("Benign", "Malignant")
STAGE2_CLASSES = SUBTYPES


class TwoStage(nn.Module):
    def __init__(self, backbone: str = "resnet50", weights: str | None = None):
        """``weights``: "imagenet", a local state-dict file, or None (random) for both stages."""
        super().__init__()
        from site_agent.training.models import build_classifier

        self.stage1 = build_classifier(backbone, len(STAGE1_CLASSES), in_channels=1, weights=weights)
        self.stage2 = build_classifier(backbone, len(STAGE2_CLASSES), in_channels=1, weights=weights)

    def forward(self, x):  # both stages' logits; the pipeline calls the stages one by one
        return self.stage1(x), self.stage2(x)


@dataclass(frozen=True)
class Roi:
    """A lesion region of one preprocessed image (uint8 pixels, kept at the site)."""

    image: np.ndarray  # or a lazy reference with .shape/.astype (read from disk when used)
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    stage1: int
    stage2: int | None
    patient_id: str
    context: float = 1.6  # crop side / box side; 1.0 for whole-image classification (no lesion box)


class RoiDataset(Dataset):
    """``(1xSxS float tensor in [0, 1], label)``; ``train=True`` jitters scale and position."""

    def __init__(self, rois: list[Roi], stage: int, size: int, *, train: bool = False, seed: int = 0):
        self.rois = [r for r in rois if stage == 1 or r.stage2 is not None]
        self.stage, self.size, self.train, self.seed = stage, size, train, seed
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.rois)

    def labels(self) -> np.ndarray:
        return np.array([r.stage1 if self.stage == 1 else r.stage2 for r in self.rois], dtype=int)

    def __getitem__(self, i: int):
        roi = self.rois[i]
        img = roi.image.astype(np.float32) / 255.0
        context = roi.context
        box = roi.box
        if self.train:  # scale/crop augmentation (rotation/flip: the core's augment_batch)
            rng = np.random.default_rng([self.seed, i, int(torch.randint(0, 2**31 - 1, ()).item())])
            context *= float(rng.uniform(0.8, 1.3))
            x0, y0, x1, y1 = box
            side = max(x1 - x0, y1 - y0)
            dx, dy = rng.uniform(-0.15, 0.15, 2) * side
            box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        crop = crop_roi(img, box, self.size, context=context)
        label = roi.stage1 if self.stage == 1 else roi.stage2
        return torch.from_numpy(crop[None]), int(label)


def patient_splits(patient_ids, seed: int = 0, fractions=(0.7, 0.15, 0.15), labels=None) -> dict[str, str]:
    """Patient -> "train" | "val" | "test" (no patient in two splits); stable across runs.

    ``labels`` (one per entry of ``patient_ids``; a patient's label is its highest, i.e.
    malignant if any of its breasts is) stratify the split: each label's patients are split
    on their own, so every label with 2+ patients reaches the test split and every label with
    3+ patients the validation split too."""
    if labels is None:
        strata = {0: sorted(set(patient_ids))}
    else:
        best: dict = {}
        for pid, lab in zip(patient_ids, labels):
            best[pid] = max(best.get(pid, lab), lab)
        strata = {}
        for pid, lab in best.items():
            strata.setdefault(lab, []).append(pid)
    out = {}
    for members in strata.values():
        ids = sorted(set(members), key=lambda p: (zlib.crc32(f"{seed}:{p}".encode()), p))
        n = len(ids)
        n_test = max(1, round(n * fractions[2])) if n >= 2 else 0
        n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
        n_train = n - n_val - n_test
        out.update({p: "train" if k < n_train else "val" if k < n_train + n_val else "test"
                    for k, p in enumerate(ids)})
    return out
