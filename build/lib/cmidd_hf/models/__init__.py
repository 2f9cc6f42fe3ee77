"""Architectures registered with timm on import: ``timm.create_model("convnet3", num_classes=..., in_chans=...)``."""

from __future__ import annotations

import timm
import torch
import torch.nn as nn

from . import alexnet_vgg, convnet, resnet_cifar
from .alexnet_vgg import AlexNetCifar, VGGCifar
from .convnet import ConvNet
from .layers import InstanceNorm2d
from .resnet_cifar import CifarResNet

__all__ = [
    "AlexNetCifar", "CifarResNet", "ConvNet", "InstanceNorm2d", "REGISTERED_ARCHITECTURES", "VGGCifar",
    "build_network", "create_model", "embed",
]

REGISTERED_ARCHITECTURES = tuple(
    sorted([*convnet._VARIANTS, *resnet_cifar._VARIANTS, *alexnet_vgg._VARIANTS])
)


def create_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model`` with this package's architectures registered (also for ``hf-hub:``/``local-dir:``)."""
    return timm.create_model(name, **kwargs)


def build_network(arch: str, num_classes: int, in_chans: int, img_size: tuple[int, int] | int) -> nn.Module:
    """A freshly initialized network for images of ``in_chans`` x ``img_size`` (ours or any timm architecture)."""
    if not timm.is_model(arch):
        raise ValueError(
            f"unknown architecture arch={arch!r}; use one of {list(REGISTERED_ARCHITECTURES)} or a timm model name"
        )
    kwargs = dict(num_classes=num_classes, in_chans=in_chans)
    if arch in REGISTERED_ARCHITECTURES:
        kwargs["img_size"] = img_size
    return timm.create_model(arch, pretrained=False, **kwargs)


def embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Penultimate (pre-logits) features of a timm-style model."""
    return model.forward_head(model.forward_features(images), pre_logits=True)
