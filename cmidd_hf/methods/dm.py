"""Distribution matching (DM, method-spec §3.1).

Each step a freshly initialized, frozen network embeds ``batch_real`` real images and the synthetic images of
every class; the loss is the squared distance between the two mean embeddings, summed over classes. One DSA
parameter set per class is shared by the class's real and synthetic batch (siamese). The network is one
persistent module re-initialized in place from (seed, step), so it is compiled once.

With a BatchNorm network all classes go through it jointly (the official BN branch), which couples classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..augment import DiffAugment, apply
from ..data import RealImageStore
from ..models import build_network
from ..precision import autocast, resolve_precision
from ..seeding import derive_seed, generator

_NORMS_WITH_BATCH_STATS = (nn.BatchNorm2d, nn.SyncBatchNorm)


class DMObjective:
    """DM matching loss. The frozen real-image path runs under bf16 autocast when the resolved ``precision``
    is bf16 (``"auto"``: where the device has native bf16, see :mod:`cmidd_hf.precision`)."""

    name = "dm"

    def __init__(
        self,
        real: RealImageStore,
        arch: str = "convnet3",
        batch_real: int = 256,
        dsa_strategy: str | None = "color_crop_cutout_flip_scale_rotate",
        seed: int = 0,
        precision: str = "auto",
        compile: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_real < 1:
            raise ValueError(f"batch_real must be >= 1, got {batch_real}")
        small = min(real.class_count(c) for c in range(real.num_classes))
        if batch_real > small:
            raise ValueError(f"batch_real={batch_real} exceeds the {small} training images of the smallest class; "
                             f"lower batch_real to at most {small}")
        self.real, self.batch_real, self.seed = real, batch_real, seed
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.augment = DiffAugment(dsa_strategy)
        self.net = build_network(arch, real.num_classes, real.image_shape[0], real.image_shape[1:]).to(self.device)
        self.net.requires_grad_(False)
        self.net.train()  # as the official code; matters only for BatchNorm networks
        self.couples_classes = any(isinstance(m, _NORMS_WITH_BATCH_STATS) for m in self.net.modules())
        self._resettable = [m for m in self.net.modules() if m is not self.net and hasattr(m, "reset_parameters")]
        self.memory_format = torch.channels_last if compile else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self._embed = torch.compile(self._embed_eager) if compile else self._embed_eager

    def _embed_eager(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def reinitialize(self, step: int) -> None:
        """Fresh random weights for ``step``, drawn in place from (seed, step)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "dm-net", step))
            for module in self._resettable:
                module.reset_parameters()

    def _autocast(self, enabled: bool):
        return autocast(self.device, self.precision if enabled else "fp32")

    def loss(self, images: torch.Tensor, ipc: int, classes: Sequence[int], step: int) -> torch.Tensor:
        self.reinitialize(step)
        height_width = tuple(images.shape[-2:])
        real_batches, syn_batches = [], []
        for c in classes:
            real = self.real.sample(c, self.batch_real, generator(self.seed, "dm-real", step, c), self.device)
            syn = images[c * ipc:(c + 1) * ipc]
            if self.augment.enabled:
                params = self.augment.sample(0, height_width, generator(self.seed, "dm-dsa", step, c),
                                             per_sample=False)
                real, syn = apply(real, params), apply(syn, params)
            real_batches.append(real)
            syn_batches.append(syn)
        n = len(classes)
        with torch.no_grad(), self._autocast(True):
            real_all = torch.cat(real_batches).contiguous(memory_format=self.memory_format)
            real_mean = self._embed(real_all).float().view(n, self.batch_real, -1).mean(1)
        with self._autocast(True):
            syn_all = torch.cat(syn_batches).contiguous(memory_format=self.memory_format)
            syn_mean = self._embed(syn_all).float().view(n, ipc, -1).mean(1)
        return ((real_mean - syn_mean) ** 2).sum()
