"""Distribution matching (DM, method-spec §3.1).

Each step a freshly initialized, frozen network embeds ``batch_real`` real images and the synthetic images of
every class; the loss is the squared distance between the two mean embeddings, summed over classes. One DSA
parameter set per class is shared by the class's real and synthetic batch (siamese). The network is one
persistent module re-initialized in place from (seed, step), so it is compiled once.

With a BatchNorm network all classes go through it jointly (the official BN branch), which couples classes:
the method then declares replicated sharding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

from ..data.augment import DiffAugment, apply
from ..engine.method import (
    DistillationMethod,
    MethodConfig,
    MethodConfigError,
    MethodContext,
    Sharding,
    register_method,
)
from ..engine.parametrization import Parametrization
from ..engine.precision import autocast, resolve_precision
from ..engine.seeding import derive_seed, generator
from ..models import build_network
from .base import (
    check_architecture,
    check_per_class_counts,
    check_strategy,
    reset_in_place,
    resettable_modules,
    resolve_strategy,
)

_NORMS_WITH_BATCH_STATS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def has_batch_statistics(net: nn.Module) -> bool:
    return any(isinstance(m, _NORMS_WITH_BATCH_STATS) for m in net.modules())


@dataclass
class DMConfig(MethodConfig):
    """DM settings (official defaults: lr_img 1.0, momentum 0.5, 256 real images per class)."""

    _argument_group_name: ClassVar[str] = "DM"

    batch_real: int = field(default=256, metadata={"help": "real images per class per step"})
    net_arch: str = field(default="convnet3", metadata={"help": "random network of DM (convnet3_bn: BN variant)"})
    dsa_strategy: str = field(default="auto", metadata={"help": "DSA ops joined by _, 'none', or 'auto' (the "
                                                                "dataset's default: no flip for digits)"})

    def validate(self) -> None:
        super().validate()
        if self.batch_real < 1:
            raise MethodConfigError(f"batch_real={self.batch_real}: must be >= 1")
        check_architecture("net_arch", self.net_arch)
        check_strategy("dsa_strategy", self.dsa_strategy)

    def identity(self) -> dict:
        return {**super().identity(), "net_arch": self.net_arch}

    def augmentation(self, dataset_name: str) -> str | None:
        return resolve_strategy(self.dsa_strategy, dataset_name)


@register_method
class DistributionMatching(DistillationMethod):
    """DM matching loss. The frozen real-image path runs under bf16 autocast when the resolved precision is
    bf16 (``"auto"``: where the device has native bf16, see :mod:`cmidd_hf.engine.precision`)."""

    name = "dm"
    config_class = DMConfig

    def __init__(self, config: DMConfig, context: MethodContext) -> None:
        super().__init__(config, context)
        real = context.real
        check_per_class_counts(real, batch_real=config.batch_real)
        self.real, self.batch_real = real, config.batch_real
        self.precision = resolve_precision(context.precision, self.device)
        self.augment = DiffAugment(context.augmentation)
        self.net = build_network(config.net_arch, real.num_classes, real.image_shape[0],
                                 real.image_shape[1:]).to(self.device)
        self.net.requires_grad_(False)
        self.net.train()  # as the official code; matters only for BatchNorm networks
        self.sharding = Sharding.REPLICATED if has_batch_statistics(self.net) else Sharding.CLASS
        self._resettable = resettable_modules(self.net)
        self.memory_format = torch.channels_last if context.compile else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self._embed = torch.compile(self._embed_eager) if context.compile else self._embed_eager

    def _embed_eager(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def begin_iteration(self, synthetic: Parametrization, step: int) -> None:
        """Fresh random weights for ``step``, drawn in place from (seed, step)."""
        reset_in_place(self._resettable, derive_seed(self.seed, "dm-net", step))

    def losses(self, synthetic: Parametrization, classes: Sequence[int], step: int,
               substep: int) -> dict[str, torch.Tensor]:
        return {"matching_loss": self.matching_loss(synthetic, classes, step)}

    def matching_loss(self, synthetic: Parametrization, classes: Sequence[int], step: int) -> torch.Tensor:
        """Sum over ``classes`` of ||mean embed(real_c) - mean embed(syn_c)||² with the network of ``step``."""
        classes = list(classes)
        images, _ = synthetic.decode(classes)
        per_class = len(images) // max(len(classes), 1)
        height_width = tuple(images.shape[-2:])
        positions = [self.real.sample_positions(c, self.batch_real, generator(self.seed, "dm-real", step, c))
                     for c in classes]
        real_images = self.real.images(torch.cat(positions), self.device)  # one gather and one transfer
        real_batches, syn_batches = [], []
        for i, c in enumerate(classes):
            real = real_images[i * self.batch_real:(i + 1) * self.batch_real]
            syn = images[i * per_class:(i + 1) * per_class]
            if self.augment.enabled:
                params = self.augment.sample(0, height_width, generator(self.seed, "dm-dsa", step, c),
                                             per_sample=False)
                real, syn = apply(real, params), apply(syn, params)
            real_batches.append(real)
            syn_batches.append(syn)
        n = len(classes)
        with torch.no_grad(), autocast(self.device, self.precision):
            real_all = torch.cat(real_batches).contiguous(memory_format=self.memory_format)
            real_mean = self._embed(real_all).float().view(n, self.batch_real, -1).mean(1)
        with autocast(self.device, self.precision):
            syn_all = torch.cat(syn_batches).contiguous(memory_format=self.memory_format)
            syn_mean = self._embed(syn_all).float().view(n, per_class, -1).mean(1)
        return ((real_mean - syn_mean) ** 2).sum()
