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
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loading import RealImageStore
from .seeding import generator


def class_sorted_labels(num_classes: int, per_class: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)


class Parametrization(nn.Module):
    """Base class: ``num_classes`` classes, ``rows_per_class`` stored rows each, class-sorted.

    Subclasses define :meth:`decode` and register their learnable tensors as parameters. ``classes`` arguments
    are positions 0..num_classes-1; the labels ``decode`` returns are the dataset's class ids, which differ
    from the positions when the parametrization holds one block of the set (:mod:`cmidd_hf.engine.blocks`).
    ``label_classes`` is the size of the label space (the dataset's number of classes).
    """

    def __init__(self, num_classes: int, rows_per_class: int, label_classes: int | None = None) -> None:
        super().__init__()
        self.num_classes, self.rows_per_class = num_classes, rows_per_class
        self.label_classes = num_classes if label_classes is None else label_classes

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

    def condensed(self) -> CondensedSet | None:
        """The stored tensors when they differ from the decoded images (multi-formation), else None."""
        return None


class PixelParametrization(Parametrization):
    """Full-resolution pixels in normalized space, ``ipc`` per class, hard labels; decode is the identity.

    ``class_ids`` (default 0..num_classes-1) are the labels of the classes in order, for a block of a larger
    set whose label space has ``label_classes`` classes."""

    def __init__(self, images: torch.Tensor, num_classes: int, class_ids: Sequence[int] | None = None,
                 label_classes: int | None = None) -> None:
        if len(images) % num_classes:
            raise ValueError(f"{len(images)} images do not split into {num_classes} classes of equal size")
        super().__init__(num_classes, len(images) // num_classes, label_classes)
        self.images = nn.Parameter(images.detach().clone().float())
        ids = torch.arange(num_classes) if class_ids is None else torch.as_tensor(list(class_ids), dtype=torch.long)
        if len(ids) != num_classes:
            raise ValueError(f"{len(ids)} class_ids for {num_classes} classes")
        self.register_buffer("labels", ids[class_sorted_labels(num_classes, self.rows_per_class)])

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


# ------------------------------------------------------------------------------------------ multi-formation


def split_sizes(length: int, factor: int) -> list[int]:
    """Lengths of ``factor`` consecutive parts of ``length`` pixels: the first ``length % factor`` parts are one
    pixel longer (IDC's ``init mix`` layout; without a remainder every part has ``length // factor``)."""
    if not 1 <= factor <= length:
        raise ValueError(f"factor={factor} must be between 1 and the image side {length}")
    base, extra = divmod(length, factor)
    return [base + 1 if i < extra else base for i in range(factor)]


def mosaic_boxes(height: int, width: int, factor: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the ``factor``² tiles that ``init mix`` writes, row-major (IDC's order)."""
    boxes, top = [], 0
    for h in split_sizes(height, factor):
        left = 0
        for w in split_sizes(width, factor):
            boxes.append((top, left, h, w))
            left += w
        top += h
    return boxes


#: the value IDC's ``decode_zoom`` pads a stored image with when its side is not a multiple of the factor
DECODE_PAD_VALUE = 0.5


def decode_mosaic(stored: torch.Tensor, factor: int) -> torch.Tensor:
    """Multi-formation decode, as IDC's ``decode_zoom`` (``decode_type single``): the stored image is padded
    at the bottom and right with 0.5 up to a multiple of ``factor`` (28 px at factor 3 → 30), cut into
    ``factor``² equal crops of side ceil(side / factor), and each crop is bilinearly upsampled to the stored
    size. Output order is crop-major: [crop 0 of every image, crop 1 of every image, ...]. Factor 1 is the
    identity. (The padded crops differ from the tiles ``init mix`` writes when the side is not a multiple of
    the factor, as in the official code.)"""
    if factor == 1:
        return stored
    height, width = stored.shape[-2:]
    split_sizes(min(height, width), factor)  # validates the factor
    crop_h, crop_w = -(-height // factor), -(-width // factor)
    padded = F.pad(stored, (0, crop_w * factor - width, 0, crop_h * factor - height), value=DECODE_PAD_VALUE)
    crops = [padded[:, :, i * crop_h:(i + 1) * crop_h, j * crop_w:(j + 1) * crop_w]
             for i in range(factor) for j in range(factor)]
    return F.interpolate(torch.cat(crops), size=(height, width), mode="bilinear", align_corners=False)


def tile_mosaic(images: torch.Tensor, factor: int, mode: str = "nearest") -> torch.Tensor:
    """The inverse layout of :func:`decode_mosaic` for initialization: ``factor``² groups of n full-size
    images (group k = crop k) downsampled with ``mode`` and tiled into n stored images."""
    groups = factor * factor
    if len(images) % groups:
        raise ValueError(f"{len(images)} images do not split into {groups} mosaic groups")
    n = len(images) // groups
    height, width = images.shape[-2:]
    stored = images.new_zeros((n, *images.shape[1:]))
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    for k, (top, left, h, w) in enumerate(mosaic_boxes(height, width, factor)):
        stored[:, :, top:top + h, left:left + w] = F.interpolate(images[k * n:(k + 1) * n], size=(h, w), mode=mode,
                                                                 **kwargs)
    return stored


@dataclass
class CondensedSet:
    """The stored tensors of a multi-formation set: ``pixels`` [n, C, H, W] in pixel scale (0..1 for valid
    images; not clipped), class-sorted hard ``labels`` [n], and the decode ``factor``."""

    pixels: torch.Tensor
    labels: torch.Tensor
    factor: int

    def decode(self, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized decoded training images and their labels (class-sorted, crop-major within a class)."""
        images, labels = [], []
        for c in torch.unique(self.labels, sorted=True).tolist():
            rows = self.labels == c
            images.append(decode_mosaic(self.pixels[rows].float(), self.factor))
            labels.append(torch.full((len(images[-1]),), c, dtype=torch.long))
        mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        return (torch.cat(images) - mean_t) / std_t, torch.cat(labels)


class MultiFormationParametrization(Parametrization):
    """IDC/IDM multi-formation: ``ipc`` stored full-size images per class, each decoding into ``factor``²
    training images (crops upsampled, :func:`decode_mosaic`).

    ``unit_pixels=True`` stores pixels in [0, 1] (IDC) and normalizes in ``decode``; False stores normalized
    values (IDM). Either way ``decode`` returns normalized images.
    """

    def __init__(self, stored: torch.Tensor, num_classes: int, factor: int, mean: Sequence[float],
                 std: Sequence[float], unit_pixels: bool) -> None:
        if len(stored) % num_classes:
            raise ValueError(f"{len(stored)} stored images do not split into {num_classes} classes of equal size")
        super().__init__(num_classes, len(stored) // num_classes)
        split_sizes(min(stored.shape[-2:]), factor)  # validates the factor
        self.factor, self.unit_pixels = factor, unit_pixels
        self.stored = nn.Parameter(stored.detach().clone().float())
        self.register_buffer("labels", class_sorted_labels(num_classes, self.rows_per_class))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @classmethod
    def from_real_mix(cls, store: RealImageStore, ipc: int, factor: int, seed: int, unit_pixels: bool,
                      mode: str = "nearest") -> MultiFormationParametrization:
        """IDC's ``init mix``: ``ipc``·factor² distinct real images of each class, drawn from (seed, class)
        (the official code takes the first ones of the class), downsampled with ``mode`` and tiled."""
        per_class = []
        for c in range(store.num_classes):
            images = store.sample(c, ipc * factor * factor, generator(seed, "init", c))
            pixels = store.denormalize(images)
            tiled = tile_mosaic(pixels, factor, mode)
            per_class.append(tiled if unit_pixels else (tiled - store.mean) / store.std)
        return cls(torch.cat(per_class), store.num_classes, factor, store.mean.flatten().tolist(),
                   store.std.flatten().tolist(), unit_pixels)

    @property
    def decoded_per_class(self) -> int:
        return self.rows_per_class * self.factor * self.factor

    def decode(self, classes: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        classes = range(self.num_classes) if classes is None else classes
        images = []
        for c in classes:
            stored = self.stored[c * self.rows_per_class:(c + 1) * self.rows_per_class]
            decoded = decode_mosaic(stored, self.factor)
            images.append((decoded - self.mean) / self.std if self.unit_pixels else decoded)
        labels = class_sorted_labels(len(images), self.decoded_per_class).to(self.labels.device)
        if not images:
            return self.stored[:0], labels
        classes_t = torch.as_tensor(list(classes), device=self.labels.device)
        return torch.cat(images), classes_t[labels]

    def clamp_pixels(self) -> None:
        """Clamp the stored pixels to the valid range [0, 1] (in the storage's space)."""
        with torch.no_grad():
            if self.unit_pixels:
                self.stored.clamp_(0.0, 1.0)
            else:
                self.stored.copy_(torch.maximum(torch.minimum(self.stored, (1 - self.mean) / self.std),
                                                -self.mean / self.std))

    def describe(self) -> dict:
        return {**super().describe(), "factor": self.factor, "decode": "single (crops upsampled bilinearly)",
                "decoded_per_class": self.decoded_per_class,
                "storage": "pixels in [0, 1]" if self.unit_pixels else "normalized"}

    def condensed(self) -> CondensedSet:
        pixels = self.stored.detach().cpu()
        if not self.unit_pixels:
            pixels = pixels * self.std.cpu() + self.mean.cpu()
        return CondensedSet(pixels.clone(), self.labels.cpu().clone(), self.factor)
