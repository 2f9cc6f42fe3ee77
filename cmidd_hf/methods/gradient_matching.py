"""Gradient matching: DC (Zhao et al., ICLR 2021) and DSA (Zhao & Bilen, ICML 2021) — method-spec §3.2.

One iteration = a fresh random network (from (seed, step)) and ``outer_loop`` image steps. Each image step
matches, class by class, the gradient of the cross-entropy w.r.t. the network parameters on a real batch and
on the class's synthetic images (DSA: one siamese augmentation per (step, outer step, class)); between image
steps the network trains for ``inner_loop`` epochs on the whole current synthetic set (DSA: per-sample
augmentation). The network, its optimizer and the position inside the iteration are the method's state and
go into every checkpoint.

Classes are sharded over processes; the set is gathered after every image step (the inner loop reads all of
it), and the inner loop runs identically on every process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

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
from ..models.layers import fuse_double_backward
from .base import (
    check_architecture,
    check_per_class_counts,
    check_strategy,
    reset_in_place,
    resettable_modules,
    resolve_strategy,
)

METRICS = ("ours", "mse", "l1", "cos")

#: (outer_loop, inner_loop) of the official ``get_loops`` by IPC.
OFFICIAL_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def _layerwise_distance(syn: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``Σ_rows 1 − <gs, gr> / (‖gs‖·‖gr‖ + 1e-6)`` with one row per output unit; 1-D tensors give 0."""
    if syn.dim() == 1:
        return syn.new_zeros(())
    syn, real = syn.reshape(syn.shape[0], -1), real.reshape(real.shape[0], -1)
    cosine = (syn * real).sum(-1) / (syn.norm(dim=-1) * real.norm(dim=-1) + 1e-6)
    return (1 - cosine).sum()


def match_distance(syn_grads: Sequence[torch.Tensor], real_grads: Sequence[torch.Tensor],
                   metric: str = "ours") -> torch.Tensor:
    """Distance between two lists of parameter gradients (the official ``match_loss``).

    * ``"ours"``: per tensor, conv weights as ``[out, in·kh·kw]`` (any ≥2-D tensor as ``[dim0, rest]``), linear
      weights as they are, summed layer-wise cosine distances over rows; 1-D tensors (biases, norm affines)
      contribute 0;
    * ``"mse"``: the sum of squared differences of all entries;
    * ``"l1"``: the sum of absolute differences of all entries (IDC's MNIST / Fashion-MNIST setting);
    * ``"cos"``: 1 − the cosine between the concatenated vectors.
    """
    if len(syn_grads) != len(real_grads):
        raise ValueError(f"{len(syn_grads)} synthetic vs {len(real_grads)} real gradient tensors")
    if metric == "ours":
        pairs = zip(syn_grads, real_grads, strict=True)
        return sum((_layerwise_distance(s, r) for s, r in pairs), syn_grads[0].new_zeros(()))
    syn = torch.cat([g.reshape(-1) for g in syn_grads])
    real = torch.cat([g.reshape(-1) for g in real_grads])
    if metric == "mse":
        return ((syn - real) ** 2).sum()
    if metric == "l1":
        return (syn - real).abs().sum()
    if metric == "cos":
        return 1 - (syn * real).sum() / (syn.norm() * real.norm() + 1e-6)
    raise ValueError(f"unknown metric={metric!r}; choose one of {list(METRICS)}")


@dataclass
class DCConfig(MethodConfig):
    """DC settings (official defaults: lr_img 0.1, momentum 0.5, network SGD 0.01, batches of 256)."""

    _argument_group_name: ClassVar[str] = "DC"

    lr_img: float = field(default=0.1, metadata={"help": "learning rate of the synthetic images"})
    batch_real: int = field(default=256, metadata={"help": "real images per class per image step"})
    net_arch: str = field(default="convnet3", metadata={"help": "network whose gradients are matched"})
    lr_net: float = field(default=0.01, metadata={"help": "SGD learning rate of the inner-loop network"})
    batch_train: int = field(default=256, metadata={"help": "inner-loop batch size"})
    outer_loop: int | None = field(default=None, metadata={"help": "image steps per iteration (default: the "
                                                                   "official get_loops value of the IPC)"})
    inner_loop: int | None = field(default=None, metadata={"help": "network epochs between image steps "
                                                                   "(default: get_loops)"})
    dis_metric: str = field(default="ours", metadata={"help": "gradient distance", "choices": list(METRICS)})
    bn_real_per_class: int = field(default=16, metadata={"help": "real images per class that set the BatchNorm "
                                                                 "statistics before they are frozen (BN nets)"})

    def validate(self) -> None:
        super().validate()
        for name in ("batch_real", "batch_train", "bn_real_per_class"):
            if getattr(self, name) < 1:
                raise MethodConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.lr_net <= 0:
            raise MethodConfigError(f"lr_net={self.lr_net}: must be > 0")
        if self.outer_loop is not None and self.outer_loop < 1:
            raise MethodConfigError(f"outer_loop={self.outer_loop}: must be >= 1 (or unset for get_loops)")
        if self.inner_loop is not None and self.inner_loop < 0:
            raise MethodConfigError(f"inner_loop={self.inner_loop}: must be >= 0 (or unset for get_loops)")
        check_architecture("net_arch", self.net_arch)

    def loops(self, ipc: int) -> tuple[int, int]:
        """(outer_loop, inner_loop): the explicit settings, else the official values of ``ipc``."""
        if self.outer_loop is not None and self.inner_loop is not None:
            return self.outer_loop, self.inner_loop
        if ipc not in OFFICIAL_LOOPS:
            raise MethodConfigError(f"ipc={ipc} has no official get_loops value ({sorted(OFFICIAL_LOOPS)}); set "
                                    "outer_loop and inner_loop")
        outer, inner = OFFICIAL_LOOPS[ipc]
        return (self.outer_loop or outer, inner if self.inner_loop is None else self.inner_loop)

    def identity(self) -> dict:
        return {**super().identity(), "net_arch": self.net_arch}


@dataclass
class DSAConfig(DCConfig):
    """DSA = DC with differentiable siamese augmentation in the matching and the inner loop."""

    _argument_group_name: ClassVar[str] = "DSA"

    dsa_strategy: str = field(default="auto", metadata={"help": "DSA ops joined by _, or 'auto' (the dataset's "
                                                                "default: no flip for digits)"})

    def validate(self) -> None:
        super().validate()
        check_strategy("dsa_strategy", self.dsa_strategy)

    def augmentation(self, dataset_name: str) -> str | None:
        return resolve_strategy(self.dsa_strategy, dataset_name)


@register_method
class DC(DistillationMethod):
    """Dataset condensation with gradient matching. The inner loop and the real gradients run under bf16
    autocast where the resolved precision is bf16; the synthetic path, which is differentiated twice, too."""

    name = "dc"
    config_class = DCConfig
    sharding = Sharding.CLASS_GATHERED

    def __init__(self, config: DCConfig, context: MethodContext) -> None:
        super().__init__(config, context)
        real = context.real
        check_per_class_counts(real, batch_real=config.batch_real, bn_real_per_class=config.bn_real_per_class)
        self.outer_loop, self.inner_loop = config.loops(context.ipc)
        self.real = real
        self.precision = resolve_precision(context.precision, self.device)
        self.augment = DiffAugment(context.augmentation)
        self.net = build_network(config.net_arch, real.num_classes, real.image_shape[0],
                                 real.image_shape[1:]).to(self.device)
        self.memory_format = torch.channels_last if context.compile else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        # compiled for the single-backward paths (real gradients, inner loop); the synthetic path is
        # differentiated twice, which compiled graphs do not support, so it stays eager (its norms' double
        # backward compiled)
        self._compiled = torch.compile(self.net) if context.compile else self.net
        fuse_double_backward(self.net, context.compile)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self._resettable = resettable_modules(self.net)
        self._batch_norms = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.net_optimizer = self._new_net_optimizer()

    def _new_net_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.params, lr=self.config.lr_net)  # official: plain SGD

    @property
    def image_steps_per_iteration(self) -> int:
        return self.outer_loop

    def begin_iteration(self, synthetic: Parametrization, step: int) -> None:
        """A fresh network (weights and BN statistics) and optimizer drawn from (seed, step)."""
        reset_in_place(self._resettable, derive_seed(self.seed, "dc-net", step))
        for bn in self._batch_norms:
            bn.reset_running_stats()
        self.net_optimizer = self._new_net_optimizer()

    def _freeze_batch_norm(self, step: int, substep: int) -> None:
        """Official BN handling: statistics from ``bn_real_per_class`` real images per class, then eval mode."""
        self.net.train()
        if not self._batch_norms:
            return
        k = self.config.bn_real_per_class
        real = torch.cat([self.real.sample(c, k, generator(self.seed, "dc-bn", step, substep, c), self.device)
                          for c in range(self.real.num_classes)])
        with torch.no_grad(), autocast(self.device, self.precision):
            self.net(real.contiguous(memory_format=self.memory_format))
        for bn in self._batch_norms:
            bn.eval()

    def _loss(self, x: torch.Tensor, y: torch.Tensor, twice_differentiable: bool = False) -> torch.Tensor:
        net = self.net if twice_differentiable else self._compiled
        with autocast(self.device, self.precision):
            logits = net(x.contiguous(memory_format=self.memory_format))
        return F.cross_entropy(logits.float(), y)

    def losses(self, synthetic: Parametrization, classes: Sequence[int], step: int,
               substep: int) -> dict[str, torch.Tensor]:
        self._freeze_batch_norm(step, substep)
        total = None
        for c in classes:
            images, labels = synthetic.decode([c])
            real = self.real.sample(c, self.config.batch_real, generator(self.seed, "dc-real", step, substep, c),
                                    self.device)
            if self.augment.enabled:
                params = self.augment.sample(0, tuple(images.shape[-2:]),
                                             generator(self.seed, "dc-dsa", step, substep, c), per_sample=False)
                real, images = apply(real, params), apply(images, params)
            real_labels = torch.full((len(real),), c, dtype=torch.long, device=self.device)
            real_grads = [g.detach() for g in torch.autograd.grad(self._loss(real, real_labels), self.params)]
            syn_loss = self._loss(images, labels.to(self.device), twice_differentiable=True)
            syn_grads = torch.autograd.grad(syn_loss, self.params, create_graph=True)
            distance = match_distance(syn_grads, real_grads, self.config.dis_metric)
            total = distance if total is None else total + distance
        return {"matching_loss": total if total is not None else torch.zeros((), device=self.device)}

    def after_image_step(self, synthetic: Parametrization, step: int, substep: int) -> None:
        """``inner_loop`` epochs of network training on the whole synthetic set (not after the last step)."""
        if substep == self.outer_loop - 1:
            return
        images, labels = synthetic.decode()
        images, labels = images.detach(), labels.to(self.device)
        rng = generator(self.seed, "dc-inner", step, substep)
        self.net.train()
        batch = self.config.batch_train
        for _ in range(self.inner_loop):
            order = torch.randperm(len(images), generator=rng).to(self.device)
            for start in range(0, len(images), batch):
                idx = order[start:start + batch]
                x = self.augment(images[idx], rng) if self.augment.enabled else images[idx]
                loss = self._loss(x, labels[idx])
                self.net_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.net_optimizer.step()

    def describe(self) -> dict:
        return {**super().describe(), "outer_loop": self.outer_loop, "inner_loop": self.inner_loop}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "net_optimizer": self.net_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.net_optimizer.load_state_dict(state["net_optimizer"])


@register_method
class DSA(DC):
    """DC with differentiable siamese augmentation (``dsa_strategy``)."""

    name = "dsa"
    config_class = DSAConfig
