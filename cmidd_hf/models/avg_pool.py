"""2x2 average pooling run as compiled loops, for the methods that differentiate a network's gradient.

Gradient matching (DC, DSA, IDC) and trajectory matching (MTT) run every pooling layer three times per pass:
forward, backward (an upsampling by 1/4) and the backward of that backward (a pooling again). PyTorch's CPU kernels
for these are 3-4x slower than one fused loop in bf16 (MTT's student on CPU A: 0.76 s of a 4.55 s iteration). The
pair here, pooling and its adjoint, each the other's gradient, is compiled once per shape with the same
arithmetic as ``F.avg_pool2d(x, 2)`` (the four summed in its order in fp32, then / 4; a gradient scaled by exactly
1/4), so results are bit-identical to it, also where a shape past torch.compile's recompile limit runs eager.
"""

from __future__ import annotations

import torch

from .compiled import run_compiled


def _pool(x: torch.Tensor) -> torch.Tensor:
    """The four summed in PyTorch's kernel order in fp32 or wider, then / 4: exact eager and compiled alike."""
    n, c, h, w = x.shape
    v = x.reshape(n, c, h // 2, 2, w // 2, 2).to(torch.promote_types(x.dtype, torch.float32))
    total = v[:, :, :, 0, :, 0] + v[:, :, :, 0, :, 1] + v[:, :, :, 1, :, 0] + v[:, :, :, 1, :, 1]
    return (total / 4).to(x.dtype)


def _unpool(g: torch.Tensor) -> torch.Tensor:
    n, c, h, w = g.shape
    return (g * 0.25)[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return run_compiled(_pool, x)

    @staticmethod
    def backward(ctx, g):
        return _Unpool.apply(g)


class _Unpool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g):
        return run_compiled(_unpool, g)

    @staticmethod
    def backward(ctx, gg):
        return _Pool.apply(gg)


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)`` for an ``[N, C, H, W]`` input with even H and W, differentiable any number of times."""
    if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"avg_pool_2x2 takes [N, C, H, W] with even H and W, got {list(x.shape)}")
    return _Pool.apply(x)
