"""ConvNet: the distillation and evaluation backbone of DC/DSA/DM/IDC (method-spec §4), registered with timm.

Each block is Conv3x3(width) -> norm -> activation -> pool. For 1-channel inputs the first convolution pads
by 3, so 28x28 MNIST-like images reach the same 4x4x128 = 2048-d embedding as 32x32 images.
"""

from __future__ import annotations

import torch.nn as nn

from ._cfg import default_cfgs_for, register_variants
from .base import FeatureClassifier
from .layers import AvgPool2d, make_activation, make_norm

__all__ = ["ConvNet"]


class ConvNet(FeatureClassifier):
    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 32,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        act: str = "relu",
        pool: str = "avg",
        global_pool: str = "",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if pool not in ("avg", "max", "none"):
            raise ValueError(f"unknown pool {pool!r}; choose 'avg', 'max' or 'none'")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        height, width_px = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        layers: list[nn.Module] = []
        channels = in_chans
        for d in range(depth):
            padding = 3 if (in_chans == 1 and d == 0) else 1
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=padding))
            height, width_px = height + 2 * padding - 2, width_px + 2 * padding - 2
            layers.append(make_norm(norm, width, (height, width_px)))
            layers.append(make_activation(act))
            if pool != "none":
                layers.append(AvgPool2d() if pool == "avg" else nn.MaxPool2d(2, 2))
                height, width_px = height // 2, width_px // 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.feature_shape = (width, height, width_px)
        self._build_head(width * height * width_px, num_classes)


_VARIANTS = {
    "convnet1": (ConvNet, dict(depth=1)),
    "convnet2": (ConvNet, dict(depth=2)),
    "convnet3": (ConvNet, dict(depth=3)),
    "convnet4": (ConvNet, dict(depth=4)),
    "convnet5": (ConvNet, dict(depth=5)),
    "convnet3_bn": (ConvNet, dict(depth=3, norm="batch")),
    "convnet4_bn": (ConvNet, dict(depth=4, norm="batch")),
    "convnet3_ln": (ConvNet, dict(depth=3, norm="layer")),
    "convnet3_gn": (ConvNet, dict(depth=3, norm="group")),
    "convnet3_nn": (ConvNet, dict(depth=3, norm="none")),
    # the DC/DSA model zoo's width ablation (ConvNetW32 ... ConvNetW256); narrow ones also keep tests fast
    "convnet3_w32": (ConvNet, dict(depth=3, width=32)),
    "convnet3_w64": (ConvNet, dict(depth=3, width=64)),
    "convnet3_w256": (ConvNet, dict(depth=3, width=256)),
    "convnet3_bn_w32": (ConvNet, dict(depth=3, width=32, norm="batch")),
}

default_cfgs = default_cfgs_for(_VARIANTS, first_conv="features.0", classifier="head")
register_variants(__name__, _VARIANTS)
