"""Differentiable siamese augmentation (DSA, method-spec §6), with explicit parameter sets.

Parameters are sampled once from a ``torch.Generator`` and then applied, so the siamese case is exact by
construction: sample one set (``per_sample=False``) and apply it to the real and the synthetic batch. Every
operation is differentiable with respect to the images.

Strategy strings join groups with "_": ``color_crop_cutout_flip_scale_rotate``; "color" is
brightness -> saturation -> contrast. Two selection modes:

* ``"dsa"`` (DC/DSA/DM): one group per call, drawn uniformly;
* ``"idc"`` (IDC's DiffAug): flip and color always, one of the remaining geometric ops, then cutout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
_HOST_PARAMS = frozenset({"size"})  # read as Python numbers: kept on the host (reading one off a GPU waits for it)


@dataclass(frozen=True)
class DSAConstants:
    """The ParamDiffAug constants of the DC/DSA/DM code."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


@dataclass
class AugmentParams:
    """A sampled augmentation: the ops to apply, in order, each with its parameter tensors.

    Tensors have a leading dimension of the batch size (per-sample) or 1 (one transform for any batch).
    """

    ops: list[tuple[str, dict[str, torch.Tensor]]] = field(default_factory=list)
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.ops]

    def on(self, device: torch.device) -> list[tuple[str, dict[str, torch.Tensor]]]:
        """The ops with their tensors on ``device``, moved once (kept for the next batch, e.g. the siamese one)
        in a single transfer: on a GPU every copy from pageable memory first waits for the queue to drain."""
        device = torch.device(device)
        moving = [(i, k) for i, (_, p) in enumerate(self.ops) for k, v in p.items()
                  if v.device != device and k not in _HOST_PARAMS]
        if not moving:
            return self.ops
        if device not in self._on_device:
            moved = [dict(p) for _, p in self.ops]
            arrived = transfer_at_once([self.ops[i][1][k] for i, k in moving], device)
            for (i, k), tensor in zip(moving, arrived, strict=True):
                moved[i][k] = tensor
            self._on_device[device] = [(name, p) for (name, _), p in zip(self.ops, moved, strict=True)]
        return self._on_device[device]


def transfer_at_once(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """``tensors`` on ``device`` through one packed float64 copy (exact for float32, bool and integers below
    2**53, which is all augmentation parameters hold), each with its own dtype and shape again."""
    packed = torch.cat([t.reshape(-1).double() for t in tensors]).to(device)
    parts = packed.split([t.numel() for t in tensors])
    return [part.view(t.shape).to(t.dtype) for t, part in zip(tensors, parts, strict=True)]


def parse_strategy(strategy: str | None) -> list[str]:
    """Groups of a strategy string; ``None``, '' and 'none' mean no augmentation."""
    if strategy is None or strategy.lower() in ("", "none"):
        return []
    groups = strategy.split("_")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown DSA op(s) {unknown} in strategy {strategy!r}; known: {'_'.join(GROUPS)}")
    return groups


class DiffAugment:
    """Sample and apply DSA transforms.

    Args:
        strategy: e.g. ``"color_crop_cutout_flip_scale_rotate"``.
        mode: ``"dsa"`` (one group per call) or ``"idc"`` (flip, color always; one geometric op; cutout).
        constants: the DSA constants.
    """

    def __init__(
        self,
        strategy: str | None,
        mode: Literal["dsa", "idc"] = "dsa",
        constants: DSAConstants | None = None,
    ) -> None:
        if mode not in ("dsa", "idc"):
            raise ValueError(f"augmentation mode must be 'dsa' or 'idc', got {mode!r}")
        self.strategy = strategy
        self.groups = parse_strategy(strategy)
        self.mode = mode
        self.constants = constants or DSAConstants()

    @property
    def enabled(self) -> bool:
        return bool(self.groups)

    def _chosen_groups(self, generator: torch.Generator) -> list[str]:
        if not self.groups:
            return []
        if self.mode == "dsa":
            return [self.groups[int(torch.randint(len(self.groups), (1,), generator=generator))]]
        always_first = [g for g in ("flip", "color") if g in self.groups]
        geometric = [g for g in self.groups if g not in ("flip", "color", "cutout")]
        chosen = list(always_first)
        if geometric:
            chosen.append(geometric[int(torch.randint(len(geometric), (1,), generator=generator))])
        if "cutout" in self.groups:
            chosen.append("cutout")
        return chosen

    def sample(
        self, batch_size: int, image_size: tuple[int, int], generator: torch.Generator, per_sample: bool = True
    ) -> AugmentParams:
        """Draw one augmentation. ``per_sample=False`` gives one transform shared by any batch (siamese)."""
        n = batch_size if per_sample else 1
        height, width = image_size
        c = self.constants
        ops: list[tuple[str, dict[str, torch.Tensor]]] = []

        def uniform() -> torch.Tensor:
            return torch.rand(n, generator=generator)

        for group in self._chosen_groups(generator):
            if group == "color":
                ops.append(("brightness", {"shift": (uniform() - 0.5) * c.brightness}))
                ops.append(("saturation", {"factor": uniform() * c.saturation}))
                ops.append(("contrast", {"factor": uniform() + c.contrast}))
            elif group == "crop":
                sx, sy = int(height * c.ratio_crop_pad + 0.5), int(width * c.ratio_crop_pad + 0.5)
                ops.append(("crop", {
                    "dx": torch.randint(-sx, sx + 1, (n,), generator=generator),
                    "dy": torch.randint(-sy, sy + 1, (n,), generator=generator),
                }))
            elif group == "cutout":
                hx, hy = int(height * c.ratio_cutout + 0.5), int(width * c.ratio_cutout + 0.5)
                ops.append(("cutout", {
                    "cx": torch.randint(0, height + (1 - hx % 2), (n,), generator=generator),
                    "cy": torch.randint(0, width + (1 - hy % 2), (n,), generator=generator),
                    "size": torch.tensor([hx, hy]),
                }))
            elif group == "flip":
                ops.append(("flip", {"flip": uniform() < c.prob_flip}))
            elif group == "scale":
                low = 1.0 / c.ratio_scale
                ops.append(("scale", {
                    "sx": uniform() * (c.ratio_scale - low) + low,
                    "sy": uniform() * (c.ratio_scale - low) + low,
                }))
            elif group == "rotate":
                ops.append(("rotate", {"theta": (uniform() - 0.5) * 2 * c.ratio_rotate / 180 * math.pi}))
        return AugmentParams(ops)

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator, params: AugmentParams | None = None
    ) -> torch.Tensor:
        """Augment ``x`` with ``params``, or with a fresh per-sample draw from ``generator``."""
        if params is None:
            params = self.sample(x.shape[0], tuple(x.shape[-2:]), generator, per_sample=True)
        return apply(x, params)


def apply(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply sampled parameters to an NCHW batch (differentiable in ``x``)."""
    for name, p in params.on(x.device):
        x = _OPS[name](x, p)
    return x


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(x.dtype).view(-1, 1, 1, 1)


def _brightness(x, p):
    return x + _per_sample(p["shift"], x)


def _saturation(x, p):
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * _per_sample(p["factor"], x) + mean


def _contrast(x, p):
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * _per_sample(p["factor"], x) + mean


def _crop(x, p):
    """Translate by (dx, dy) pixels with zero fill: out[i, j] = x[i + dx, j + dy]."""
    n, _, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None, :] + p["dx"][:, None] + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device)[None, :] + p["dy"][:, None] + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # the 1-pixel zero border supplies the fill
    if rows.shape[0] == 1:  # one shift for the whole batch
        return padded[:, :, rows[0][:, None], cols[0][None, :]]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _cutout(x, p):
    """Zero a size_x x size_y square whose centre is (cx, cy), truncated at the borders."""
    _, _, h, w = x.shape
    size_x, size_y = int(p["size"][0]), int(p["size"][1])
    top = (p["cx"] - size_x // 2)[:, None]
    left = (p["cy"] - size_y // 2)[:, None]
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top) & (rows < top + size_x)
    in_cols = (cols >= left) & (cols < left + size_y)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


def _flip(x, p):
    return torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(3), x)


def _affine(x, theta):
    if theta.shape[0] == 1 and x.shape[0] > 1:
        theta = theta.expand(x.shape[0], -1, -1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _scale(x, p):
    zeros = torch.zeros_like(p["sx"])
    theta = torch.stack([torch.stack([p["sx"], zeros, zeros], 1), torch.stack([zeros, p["sy"], zeros], 1)], 1)
    return _affine(x, theta)


def _rotate(x, p):
    t = p["theta"]
    cos, sin, zeros = torch.cos(t), torch.sin(t), torch.zeros_like(t)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    return _affine(x, theta)


_OPS = {
    "brightness": _brightness,
    "saturation": _saturation,
    "contrast": _contrast,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


# ------------------------------------------------------------------------------------------ defaults and CutMix

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def default_augmentation(dataset_name: str, strategy: str = DSA_STRATEGY) -> str:
    """The DSA strategy for a dataset: digits (MNIST, SVHN) are not flipped (DSA README)."""
    digits = any(key in dataset_name.lower() for key in ("mnist", "svhn")) and "fashion" not in dataset_name.lower()
    return "_".join(g for g in strategy.split("_") if g != "flip") if digits else strategy


def mixup(x, y, alpha: float, generator: torch.Generator):
    """Mixup: ``lam·x + (1-lam)·x[perm]`` with lam ~ Beta(alpha, alpha) (SRe2L's relabel: alpha 0.8, every
    batch); returns mixed x, partner y, lambda. Both draws come from ``generator``."""
    seed = int(torch.randint(2 ** 62, (), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    return lam * x + (1.0 - lam) * x[perm], y[perm], lam


def cutmix(x, y, generator):
    """CutMix with lambda ~ Beta(1, 1) and a random partner permutation; returns mixed x, partner y, lambda."""
    n, _, h, w = x.shape
    lam = float(torch.rand((), generator=generator))
    perm = torch.randperm(n, generator=generator).to(x.device)
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, (), generator=generator)), int(torch.randint(w, (), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, y[perm], lam
