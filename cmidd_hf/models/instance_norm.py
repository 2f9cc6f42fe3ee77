"""Instance norm with a closed-form double backward, for the methods that differentiate a network's gradient.

Gradient matching (DC, DSA, IDC) and trajectory matching (MTT) backpropagate through a network's parameter
gradient, so through the backward of every normalization layer. PyTorch's double backward of ``group_norm`` is
composed of ~20 full-size element-wise operations and casts; in MTT's unrolled student it was half of the
iteration's time. Here the forward and the first backward are PyTorch's own kernels (``native_group_norm`` and
``native_group_norm_backward``: first-order results are bit-identical to ``nn.GroupNorm``), and the backward of
the backward is the closed form below: five per-instance means and two outputs, in fp32 or wider, optionally
compiled into a few fused loops.

Notation, per instance (sample, channel) over its M spatial positions: ``u = (x - mean) * r`` with
``r = 1 / sqrt(var + eps)``, ``<v>`` the mean over positions, ``P(v) = v - <v> - u <v u>`` (a symmetric map).
First backward: ``gx = r w P(gy)``, ``gw = Σ gy u``, ``gb = Σ gy``. For upstream gradients (ggx, ggw, ggb)
of (gx, gw, gb): ``d/dgy = r w P(ggx) + ggw u + ggb``, ``d/dw = Σ r M <ggx P(gy)>``, and, since ``du/dx = r P``
and ``dr/dx = -r² u / M``, ``d/dx = r P(g_u) - g_r r² u / M`` with ``g_u = (ggw - r w <ggx u>) gy - r w <gy u> ggx``
and ``g_r = w M <ggx P(gy)>``.
"""

from __future__ import annotations

import torch

from .compiled import run_compiled


def instance_norm_double_backward(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
                                  gy: torch.Tensor, ggx: torch.Tensor, ggw: torch.Tensor,
                                  ggb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``<ggx, gx> + <ggw, gw> + <ggb, gb>`` with respect to ``(x, gy, weight)`` (module docstring)."""
    channels, positions = x.shape[1], x.shape[2:].numel()
    acc = torch.promote_types(x.dtype, torch.float32)
    dims = tuple(range(2, x.dim()))
    stat_shape = (-1, channels) + (1,) * len(dims)
    r = rstd.view(stat_shape).to(acc)
    u = (x.to(acc) - mean.view(stat_shape).to(acc)) * r
    gy_, ggx_ = gy.to(acc), ggx.to(acc)
    w = weight.to(acc).view(stat_shape)
    ggw, ggb = ggw.to(acc).view(stat_shape), ggb.to(acc).view(stat_shape)
    mean_gy, mean_gy_u = gy_.mean(dims, keepdim=True), (gy_ * u).mean(dims, keepdim=True)
    mean_ggx, mean_ggx_u = ggx_.mean(dims, keepdim=True), (ggx_ * u).mean(dims, keepdim=True)
    ggx_p_gy = (ggx_ * gy_).mean(dims, keepdim=True) - mean_gy * mean_ggx - mean_gy_u * mean_ggx_u  # <ggx P(gy)>
    rw = r * w
    k = ggw - rw * mean_ggx_u  # g_u = k gy - rw <gy u> ggx
    mean_gu = k * mean_gy - rw * mean_gy_u * mean_ggx
    mean_gu_u = k * mean_gy_u - rw * mean_gy_u * mean_ggx_u
    g_r = w * positions * ggx_p_gy
    d_x = r * k * gy_ - r * rw * mean_gy_u * ggx_ - r * mean_gu - u * (r * mean_gu_u + g_r * r * r / positions)
    d_gy = rw * ggx_ + k * u + (ggb - rw * mean_ggx)
    d_w = (r * positions * ggx_p_gy).sum(0).reshape(channels)
    return d_x.to(x.dtype), d_gy.to(gy.dtype), d_w.to(weight.dtype)


class _InstanceNormGradient(torch.autograd.Function):
    """``native_group_norm_backward`` as a differentiable function of (gy, x, weight)."""

    @staticmethod
    def forward(ctx, gy, x, weight, mean, rstd, mask, fused):
        n, c = x.shape[:2]
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(gy, x, mean, rstd, weight, n, c, x[0, 0].numel(), c,
                                                               mask)
        ctx.save_for_backward(gy, x, weight, mean, rstd)
        ctx.fused = fused
        return gx, gw, gb

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, ggx, ggw, ggb):
        gy, x, weight, mean, rstd = ctx.saved_tensors
        ggx = torch.zeros_like(x) if ggx is None else ggx
        ggw = torch.zeros_like(weight) if ggw is None else ggw
        ggb = torch.zeros_like(weight) if ggb is None else ggb
        inputs = (x, mean, rstd, weight, gy, ggx, ggw, ggb)
        if ctx.fused:
            d_x, d_gy, d_w = run_compiled(instance_norm_double_backward, *inputs)
        else:
            d_x, d_gy, d_w = instance_norm_double_backward(*inputs)
        return d_gy, d_x, d_w, None, None, None, None


class _InstanceNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, fused):
        n, c = x.shape[:2]
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, x[0, 0].numel(), c, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.fused = fused
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, rstd = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        gx, gw, gb = _InstanceNormGradient.apply(gy, x, weight, mean, rstd, mask, ctx.fused)
        return gx, gw, gb, None, None


def instance_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
                  fused: bool = False) -> torch.Tensor:
    """``F.group_norm(x, C, weight, bias, eps)`` (one group per channel) whose double backward is the closed form;
    ``fused`` runs that closed form compiled (``torch.compile``: a few fused loops instead of ~25 operations)."""
    return _InstanceNorm.apply(x, weight, bias, eps, fused)
