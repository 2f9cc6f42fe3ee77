"""Small functions run as compiled kernels inside eager autograd code (the layers' fused backward paths)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch


@functools.cache
def _compiled(fn: Callable) -> Callable:
    """``fn`` compiled once per process, static shapes: a network has a handful, each compiled once. (After a
    second shape, Inductor's automatic dynamic-shape recompile of the instance norm's double backward returned
    inf / NaN, torch 2.14.1, CPU.)"""
    return torch.compile(fn, dynamic=False)


def run_compiled(fn: Callable, *args: object) -> object:
    """``fn(*args)`` compiled, on detached tensors with autocast off, so its guards see only shapes, dtypes and
    strides: called from a forward under autocast and from a backward without it, or with tensors that require
    grad and tensors that do not, it would otherwise recompile for each and soon reach torch.compile's recompile
    limit (past which it runs eager)."""
    device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
    with torch.autocast(device, enabled=False):
        return _compiled(fn)(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
