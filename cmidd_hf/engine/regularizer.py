"""The contract between the distillation engine and a regularizer (the class-aware CMI is one).

The engine imports no concrete regularizer: it calls ``is_active(step)`` and, when active,
``regularizer(images, labels, step=..., num_classes=..., total_samples=..., draw=...)`` on the decoded,
un-augmented synthetic images of the process's classes (the method's ``regularizer_inputs``), and adds the
returned loss; ``draw`` keys the regularizer's random draws (the method's ``regularizer_draw``: the iteration
for most methods, the image step for IDC); the returned numbers are logged
(summed over processes, so each must be additive over class shards, e.g. a shard's share of a global mean).
"""

from __future__ import annotations

from typing import Protocol

import torch


class Regularizer(Protocol):
    def is_active(self, step: int) -> bool: ...

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int, num_classes: int | None = None,
                 total_samples: int | None = None,
                 draw: tuple[int, ...] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, numbers to log). ``total_samples`` is the size of the whole set when ``images`` is a shard;
        ``draw`` (default ``(step,)``) keys the random draws, e.g. which proxy."""
        ...
