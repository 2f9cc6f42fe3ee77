"""Loss terms whose gradient a method computed itself (e.g. by recomputation, to bound memory), plugged into
the engine's ordinary ``backward``: the value is the loss, the backward hands out the given gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class _PrecomputedGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: torch.Tensor, gradients: tuple[torch.Tensor, ...], *inputs: torch.Tensor) -> torch.Tensor:
        ctx.gradients = gradients
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return (None, None, *(grad_output * g for g in ctx.gradients))


def loss_with_gradients(value: torch.Tensor, inputs: Sequence[torch.Tensor],
                        gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient with respect to ``inputs[i]`` is ``gradients[i]`` (scaled by
    the incoming gradient), so ``(λ·loss).backward()`` works as if the loss had been differentiated."""
    if len(inputs) != len(gradients):
        raise ValueError(f"{len(inputs)} inputs but {len(gradients)} gradients")
    for tensor, grad in zip(inputs, gradients, strict=True):
        if tensor.shape != grad.shape:
            raise ValueError(f"gradient of shape {tuple(grad.shape)} for an input of shape {tuple(tensor.shape)}")
    return _PrecomputedGradient.apply(value, tuple(g.detach() for g in gradients), *inputs)
