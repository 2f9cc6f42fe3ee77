"""Normalization and activation factories shared by the registered architectures."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .avg_pool import avg_pool_2x2
from .instance_norm import instance_norm


class InstanceNorm2d(nn.GroupNorm):
    """Instance norm as the DC/DSA/DM/IDC code builds it: GroupNorm(C, C) with affine parameters.

    Eager, it runs :func:`~cmidd_hf.models.instance_norm.instance_norm` (the same kernels, a cheaper double
    backward; ``fused_double_backward`` compiles that); under ``torch.compile`` the plain GroupNorm, which
    Inductor lowers itself."""

    fused_double_backward: bool = False

    def __init__(self, num_channels: int, eps: float = 1e-5, **_: object) -> None:
        super().__init__(num_channels, num_channels, eps=eps, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return super().forward(x)
        return instance_norm(x, self.weight, self.bias, self.eps, self.fused_double_backward)


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` (the ConvNet's pooling); with ``fused_double_backward`` set, eager even-sized inputs
    run :func:`~cmidd_hf.models.avg_pool.avg_pool_2x2` (compiled loops, bit-identical results)."""

    fused_double_backward: bool = False

    def __init__(self) -> None:
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.fused_double_backward and not torch.compiler.is_compiling() and x.dim() == 4
                and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0):
            return avg_pool_2x2(x)
        return super().forward(x)


def fuse_double_backward(network: nn.Module, enabled: bool = True) -> nn.Module:
    """Run ``network``'s instance norms and 2x2 average pools through compiled kernels for their backward and
    double backward (for methods that differentiate its gradient and run compiled); returns ``network``."""
    for module in network.modules():
        if isinstance(module, (InstanceNorm2d, AvgPool2d)):
            module.fused_double_backward = enabled
    return network


class GroupNorm4(nn.GroupNorm):
    """GroupNorm with 4 groups (the ConvNet "groupnorm" variant)."""

    def __init__(self, num_channels: int, **_: object) -> None:
        super().__init__(4, num_channels, affine=True)


NORMS = ("instance", "batch", "layer", "group", "none")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "sigmoid": nn.Sigmoid,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
}


def make_norm(norm: str, channels: int, spatial: tuple[int, int]) -> nn.Module:
    """A normalization layer for a [N, channels, *spatial] activation."""
    if norm == "instance":
        return InstanceNorm2d(channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":
        return nn.LayerNorm([channels, *spatial], elementwise_affine=True)
    if norm == "group":
        return GroupNorm4(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
