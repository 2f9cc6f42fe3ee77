"""ResNet-18 for 32x32 inputs (3x3 stride-1 stem, no max-pool): the CMIDD proxy (instance norm) and its BN twin.

Built on timm's ResNet; only the stem changes, so timm's save/load and feature API apply unchanged.
At 64x64 the head pools globally (512-d), unlike the official 2048-d fixed 4x4 pooling.
"""

from __future__ import annotations

import torch.nn as nn
from timm.models.resnet import BasicBlock, ResNet

from ._cfg import default_cfgs_for, register_variants
from .layers import InstanceNorm2d

__all__ = ["CifarResNet"]


class CifarResNet(ResNet):
    def __init__(self, layers=(2, 2, 2, 2), norm: str = "instance", in_chans: int = 3, img_size=None, **kwargs):
        norm_layer = {"instance": InstanceNorm2d, "batch": nn.BatchNorm2d}.get(norm)
        if norm_layer is None:
            raise ValueError(f"unknown norm {norm!r} for resnet*_cifar; choose 'instance' or 'batch'")
        super().__init__(block=BasicBlock, layers=layers, in_chans=in_chans, norm_layer=norm_layer, **kwargs)
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.maxpool = nn.Identity()


_VARIANTS = {
    "resnet18_cifar": (CifarResNet, dict(layers=(2, 2, 2, 2), norm="instance")),  # the official CMIDD proxy
    "resnet18_cifar_bn": (CifarResNet, dict(layers=(2, 2, 2, 2), norm="batch")),
}

default_cfgs = default_cfgs_for(_VARIANTS, first_conv="conv1", classifier="fc")
register_variants(__name__, _VARIANTS)
