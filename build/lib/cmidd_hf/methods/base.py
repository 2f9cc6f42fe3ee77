"""The contract between the distillation engine and a base method (DM, DC/DSA, IDC, MTT, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class DistillationObjective(Protocol):
    """A matching loss that decomposes over classes.

    ``loss(images, ipc, classes, step)`` returns the loss of ``classes`` only, given the whole class-sorted
    synthetic tensor (``ipc`` images per class). Every random draw must derive from (seed, step, class), so
    the loss of a class does not depend on which process computes it. Objectives whose classes interact
    (e.g. BatchNorm networks) set ``couples_classes = True``; every process then computes all classes.
    """

    name: str
    couples_classes: bool

    def loss(self, images: torch.Tensor, ipc: int, classes: Sequence[int], step: int) -> torch.Tensor: ...
