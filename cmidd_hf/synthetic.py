"""The learnable form of a synthetic set while it is being distilled: a *parametrization* with a decode step.

Two names, on purpose: a :class:`Parametrization` is what the optimizer updates (full-resolution pixels here;
condensed tensors plus a decode factor for multi-formation methods), while :class:`cmidd_hf.hub.SyntheticSet`
is the finished, decoded set that is saved, shared on the Hub and evaluated. Everything that consumes images
(matching losses, the CMI, evaluation, grids, saving) sees ``decode()``.

Every learnable tensor listed by :meth:`Parametrization.per_class_tensors` is class-sorted along dim 0 with
``rows_per_class`` rows per class, which is what lets the engine shard classes across processes and gather
them back, whatever the parametrization.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .data import RealImageStore
from .seeding import generator


def class_sorted_labels(num_classes: int, per_class: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)


class Parametrization(nn.Module):
    """Base class: ``num_classes`` classes, ``rows_per_class`` stored rows each, class-sorted.

    Subclasses define :meth:`decode` and register their learnable tensors as parameters.
    """

    def __init__(self, num_classes: int, rows_per_class: int) -> None:
        super().__init__()
        self.num_classes, self.rows_per_class = num_classes, rows_per_class

    def rows_of(self, classes: Sequence[int]) -> torch.Tensor:
        """Indices (dim 0 of every per-class tensor) of the stored rows of ``classes``."""
        if not classes:
            return torch.zeros(0, dtype=torch.long)
        k = self.rows_per_class
        return torch.cat([torch.arange(c * k, (c + 1) * k) for c in classes])

    def per_class_tensors(self) -> list[nn.Parameter]:
        """The learnable tensors whose dim 0 holds ``rows_per_class`` rows per class (all parameters here)."""
        return list(self.parameters())

    def decode(self, classes: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images (normalized space) and labels of ``classes`` (all classes when None), class-sorted.

        Labels are class ids ([N] int64) or probability vectors ([N, C] float) for soft-label methods.
        """
        raise NotImplementedError

    def describe(self) -> dict:
        """What the dataset card records about the parametrization."""
        return {"type": type(self).__name__, "rows_per_class": self.rows_per_class}


class PixelParametrization(Parametrization):
    """Full-resolution pixels in normalized space, ``ipc`` per class, hard labels; decode is the identity."""

    def __init__(self, images: torch.Tensor, num_classes: int) -> None:
        if len(images) % num_classes:
            raise ValueError(f"{len(images)} images do not split into {num_classes} classes of equal size")
        super().__init__(num_classes, len(images) // num_classes)
        self.images = nn.Parameter(images.detach().clone().float())
        self.register_buffer("labels", class_sorted_labels(num_classes, self.rows_per_class))

    @classmethod
    def from_real(cls, store: RealImageStore, ipc: int, seed: int) -> PixelParametrization:
        """Random distinct real images of every class (the official ``--init real``), drawn from (seed, class)."""
        images = torch.cat([store.sample(c, ipc, generator(seed, "init", c)) for c in range(store.num_classes)])
        return cls(images, store.num_classes)

    @classmethod
    def from_noise(cls, store: RealImageStore, ipc: int, seed: int) -> PixelParametrization:
        """Standard-normal images (in normalized space)."""
        shape = (store.num_classes * ipc, *store.image_shape)
        return cls(torch.randn(shape, generator=generator(seed, "init-noise")), store.num_classes)

    def decode(self, classes: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if classes is None:
            return self.images, self.labels
        rows = self.rows_of(classes).to(self.images.device)
        return self.images[rows], self.labels[rows]
