"""AlexNet and VGG-11 for 32x32 inputs, as in the DC/DSA/DM model zoo (method-spec §4), registered with timm."""

from __future__ import annotations

import torch
import torch.nn as nn

from ._cfg import default_cfgs_for, register_variants
from .base import FeatureClassifier
from .layers import InstanceNorm2d

__all__ = ["AlexNetCifar", "VGGCifar"]


class _MeasuredClassifier(FeatureClassifier):
    """The flattened feature size is measured once at build (it depends on padding and pooling)."""

    def _finish(self, num_classes: int, in_chans: int, img_size) -> None:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        with torch.no_grad():
            shape = self.features(torch.zeros(1, in_chans, *size)).shape
        self._build_head(shape[1] * shape[2] * shape[3], num_classes)


def _norm(kind: str, channels: int) -> nn.Module:
    return {"none": nn.Identity, "instance": InstanceNorm2d, "batch": nn.BatchNorm2d}[kind](channels)


class AlexNetCifar(_MeasuredClassifier):
    """Five convolutions (128, 192, 256, 192, 192) with three max-pools; 3072-d embedding at 32x32."""

    def __init__(self, num_classes=10, in_chans=3, img_size=32, norm="none", global_pool="", **_):
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"unknown norm {norm!r} for alexnet_cifar; choose 'none' or 'batch'")
        spec = [(128, 5, 4 if in_chans == 1 else 2, True), (192, 5, 2, True), (256, 3, 1, False),
                (192, 3, 1, False), (192, 3, 1, True)]
        layers: list[nn.Module] = []
        channels = in_chans
        for out, kernel, padding, pool in spec:
            layers += [nn.Conv2d(channels, out, kernel, padding=padding), _norm(norm, out), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
            channels = out
        self.features = nn.Sequential(*layers)
        self._finish(num_classes, in_chans, img_size)


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGGCifar(_MeasuredClassifier):
    """VGG-11 with instance norm (default) or BatchNorm; 512-d embedding at 32x32."""

    def __init__(self, num_classes=10, in_chans=3, img_size=32, norm="instance", cfg=_VGG11, global_pool="", **_):
        super().__init__()
        if norm not in ("none", "instance", "batch"):
            raise ValueError(f"unknown norm {norm!r} for vgg11_cifar; choose 'instance', 'batch' or 'none'")
        layers: list[nn.Module] = []
        channels = in_chans
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            padding = 3 if (in_chans == 1 and i == 0) else 1
            layers += [nn.Conv2d(channels, v, 3, padding=padding), _norm(norm, v), nn.ReLU(inplace=True)]
            channels = v
        self.features = nn.Sequential(*layers)
        self._finish(num_classes, in_chans, img_size)


_VARIANTS = {
    "alexnet_cifar": (AlexNetCifar, dict(norm="none")),
    "alexnet_cifar_bn": (AlexNetCifar, dict(norm="batch")),
    "vgg11_cifar": (VGGCifar, dict(norm="instance")),
    "vgg11_cifar_bn": (VGGCifar, dict(norm="batch")),
}

default_cfgs = default_cfgs_for(_VARIANTS, first_conv="features.0", classifier="head")


register_variants(__name__, _VARIANTS)
