"""IDC: dataset condensation with efficient synthetic-data parametrization (Kim et al., ICML 2022) —
method-spec §3.3, the ``--reproduce`` settings of the official ``condense.py``.

The set is multi-formation: ``ipc`` stored images per class in [0, 1] pixels, each decoding into factor²
training images (crops upsampled). One iteration = a fresh random network and ``inner_loop`` image steps;
each image step matches, class by class, the cross-entropy gradients of the conv weights (``mse``) on a real
batch and on at most ``batch_syn_max`` decoded synthetic images, with one augmentation for the concatenated
[real; synthetic] batch; then the network trains for one epoch of real data capped at ``n_data`` (per-sample
``color_crop`` + CutMix). The stored pixels are clamped to [0, 1] at the start of every iteration.

The network trains on real data only, identically on every process, so classes are sharded without a
gather. Each image step is one step for all classes; :class:`~cmidd_hf.engine.optim.ClassSequentialSGD` reproduces
the official one-step-per-class momentum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..data.augment import DiffAugment, apply, cutmix
from ..data.loading import canonical_dataset
from ..engine.method import (
    DistillationMethod,
    MethodConfig,
    MethodConfigError,
    MethodContext,
    Sharding,
    register_method,
)
from ..engine.optim import ClassSequentialSGD
from ..engine.parametrization import MultiFormationParametrization, Parametrization, PixelParametrization
from ..engine.precision import autocast, resolve_precision
from ..engine.seeding import derive_seed, generator
from ..models import build_network
from ..models.layers import fuse_double_backward
from .base import (
    check_architecture,
    check_mix_init,
    check_net_sgd,
    check_per_class_counts,
    check_strategy,
    mix_image_counts,
    reset_in_place,
    resettable_modules,
)
from .gradient_matching import METRICS, match_distance


def subsample_rows(images: torch.Tensor, labels: torch.Tensor, limit: int,
                   rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``limit`` random rows (all of them, in order, when there are fewer)."""
    if limit <= 0 or len(images) <= limit:
        return images, labels
    keep = torch.randperm(len(images), generator=rng)[:limit].to(images.device)
    return images[keep], labels[keep]


@dataclass
class IDCConfig(MethodConfig):
    """IDC settings (official ``--reproduce``: factor 2, lr_img by IDC's rule (:meth:`resolved_lr_img`), momentum
    0.5, real batch 64, ≤128 decoded images per class, 100 inner steps, network SGD 0.01 / 0.9 / 5e-4, n_data
    2000)."""

    _argument_group_name: ClassVar[str] = "IDC"

    lr_img: float | None = field(default=None, metadata={
        "help": "learning rate of the stored pixels, replacing IDC's rule (default: lr_img_base * (ipc/10) * "
                "(size/size_base)^2, size_base 28 for MNIST and 32 otherwise, as IDC's tune_lr_img)"})
    lr_img_base: float | None = field(default=None, metadata={
        "help": "base rate of IDC's lr_img rule (default: the official 1e-4 for MNIST / Fashion-MNIST, 5e-3 "
                "otherwise); cannot be combined with lr_img"})
    init: str = field(default="mix", metadata={"help": "mix: factor² real images per stored image (IDC); real: "
                                                       "one real image each; noise", "choices": ["mix", "real",
                                                                                                  "noise"]})
    factor: int = field(default=2, metadata={"help": "multi-formation factor: each stored image decodes into "
                                                     "factor² images (1: plain pixels)"})
    batch_real: int = field(default=64, metadata={"help": "real images per class per image step"})
    batch_syn_max: int = field(default=128, metadata={"help": "decoded synthetic images per class per image step "
                                                              "(random subset; also what the CMI sees)"})
    inner_loop: int = field(default=100, metadata={"help": "image steps (each followed by a network epoch) per "
                                                           "iteration"})
    n_data: int = field(default=2000, metadata={"help": "real images per network epoch (official: 2000 CIFAR, "
                                                        "500 SVHN)"})
    net_arch: str = field(default="convnet3", metadata={"help": "network whose gradients are matched"})
    lr_net: float = field(default=0.01, metadata={"help": "network SGD learning rate"})
    momentum_net: float = field(default=0.9, metadata={"help": "network SGD momentum"})
    weight_decay_net: float = field(default=5e-4, metadata={"help": "network SGD weight decay"})
    match_augmentation: str = field(default="color_crop_cutout", metadata={
        "help": "IDC-style augmentation of the [real; synthetic] matching batch (one draw for the batch)"})
    net_augmentation: str = field(default="color_crop", metadata={
        "help": "per-sample IDC-style augmentation of the network's real batches"})
    mix_p: float = field(default=0.5, metadata={"help": "CutMix probability in the network epochs"})
    dis_metric: str = field(default="mse", metadata={"help": "gradient distance", "choices": list(METRICS)})
    per_class_steps: bool = field(default=True, metadata={"help": "reproduce the official one image step per "
                                                                  "class (momentum of the other classes' steps)"})

    def validate(self) -> None:
        if self.lr_img is not None and self.lr_img <= 0:
            raise MethodConfigError(f"lr_img={self.lr_img}: must be > 0 (or unset for the IDC rule)")
        if self.lr_img_base is not None and self.lr_img_base <= 0:
            raise MethodConfigError(f"lr_img_base={self.lr_img_base}: must be > 0 (or unset for IDC's per-dataset "
                                    "base)")
        if self.lr_img is not None and self.lr_img_base is not None:
            raise MethodConfigError(f"lr_img={self.lr_img} and lr_img_base={self.lr_img_base}: lr_img replaces IDC's "
                                    "rule, so lr_img_base would be ignored; set only one of them")
        saved, self.lr_img = self.lr_img, 1.0 if self.lr_img is None else self.lr_img
        try:
            super().validate()
        finally:
            self.lr_img = saved
        for name in ("factor", "batch_real", "batch_syn_max", "inner_loop"):
            if getattr(self, name) < 1:
                raise MethodConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.n_data < 0:
            raise MethodConfigError(f"n_data={self.n_data}: must be >= 0 (0: no network training)")
        check_net_sgd(self.lr_net, self.momentum_net, self.weight_decay_net)
        if not 0 <= self.mix_p <= 1:
            raise MethodConfigError(f"mix_p={self.mix_p}: must be in [0, 1]")
        check_mix_init(self.init, self.factor)
        check_architecture("net_arch", self.net_arch)
        check_strategy("match_augmentation", self.match_augmentation)
        check_strategy("net_augmentation", self.net_augmentation)

    def resolved_lr_img(self, ipc: int, image_size: int, dataset: str) -> float:
        """The explicit ``lr_img``, else IDC's rule (``argument.py::tune_lr_img`` with ``misc/reproduce.py``'s
        bases): base · (ipc/10) · (size/size_base)², base 1e-4 for MNIST and Fashion-MNIST (5e-3 otherwise) and
        size_base 28 for MNIST only (32 otherwise, Fashion-MNIST included): 1e-4 for MNIST and 7.66e-5 for
        Fashion-MNIST at IPC 10, 5e-3 for CIFAR-10."""
        if self.lr_img is not None:
            return self.lr_img
        kind = canonical_dataset(dataset)
        base = self.lr_img_base if self.lr_img_base is not None else (
            1e-4 if kind in ("mnist", "fashion_mnist") else 5e-3)
        size_base = 28 if kind == "mnist" else 32
        return base * (ipc / 10) * (image_size / size_base) ** 2

    def identity(self) -> dict:
        return {**super().identity(), "net_arch": self.net_arch, "factor": self.factor}

    def decoded_per_class(self, ipc: int) -> int:
        return ipc * self.factor**2

    def augmentation(self, dataset_name: str) -> str | None:
        return self.match_augmentation


@register_method
class IDC(DistillationMethod):
    """IDC gradient matching on a multi-formation set. The real gradients and the network epochs run under
    bf16 autocast where the resolved precision is bf16; the synthetic path (differentiated twice) too."""

    name = "idc"
    config_class = IDCConfig
    sharding = Sharding.CLASS

    def __init__(self, config: IDCConfig, context: MethodContext) -> None:
        super().__init__(config, context)
        real = context.real
        check_per_class_counts(real, batch_real=config.batch_real,
                               **mix_image_counts(config.init, context.ipc, config.factor))
        self.real = real
        self.precision = resolve_precision(context.precision, self.device)
        self.match_augment = DiffAugment(config.match_augmentation, mode="idc")
        self.net_augment = DiffAugment(config.net_augmentation, mode="idc")
        self.net = build_network(config.net_arch, real.num_classes, real.image_shape[0],
                                 real.image_shape[1:]).to(self.device)
        self.memory_format = torch.channels_last if context.compile else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self._compiled = torch.compile(self.net) if context.compile else self.net
        fuse_double_backward(self.net, context.compile)  # the matching path is eager (differentiated twice)
        # matched: conv weights only (official bias=False, fc=False)
        self.matched = [p for p in self.net.parameters() if p.dim() == 4]
        self._resettable = resettable_modules(self.net)
        self.net_optimizer = self._new_net_optimizer()

    def _new_net_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.SGD(self.net.parameters(), lr=c.lr_net, momentum=c.momentum_net,
                               weight_decay=c.weight_decay_net)

    @property
    def image_steps_per_iteration(self) -> int:
        return self.config.inner_loop

    def init_synthetic(self) -> Parametrization:
        c, real, ipc = self.config, self.context.real, self.context.ipc
        if c.init == "mix":
            return MultiFormationParametrization.from_real_mix(real, ipc, c.factor, self.seed, unit_pixels=True)
        if c.init == "real":  # one real image per stored image (IDC's "random")
            pixels = real.denormalize(PixelParametrization.from_real(real, ipc, self.seed).images.detach())
        else:  # IDC's noise: N(0.5, 1/4²) clamped to [0, 1]
            pixels = (PixelParametrization.from_noise(real, ipc, self.seed).images.detach() / 4 + 0.5).clamp(0, 1)
        return MultiFormationParametrization(pixels, real.num_classes, c.factor, real.mean.flatten().tolist(),
                                             real.std.flatten().tolist(), unit_pixels=True)

    @property
    def lr_img(self) -> float:
        """The image learning rate of this run (the config's, else IDC's rule for this dataset, IPC and size)."""
        return self.config.resolved_lr_img(self.context.ipc, self.real.image_shape[-1], self.context.dataset)

    def make_optimizer(self, synthetic: Parametrization):
        c = self.config
        lr = self.lr_img
        drift = synthetic.num_classes - 1 if c.per_class_steps else 0
        return ClassSequentialSGD(synthetic.parameters(), lr=lr, momentum=c.momentum_img, drift_steps=drift), None

    def begin_iteration(self, synthetic: Parametrization, step: int) -> None:
        """Clamp the stored pixels to [0, 1]; a fresh network and optimizer drawn from (seed, step)."""
        synthetic.clamp_pixels()
        reset_in_place(self._resettable, derive_seed(self.seed, "idc-net", step))
        self.net_optimizer = self._new_net_optimizer()

    def _syn_batch(self, synthetic: Parametrization, c: int, step: int,
                   substep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoded images of class ``c``, subsampled to ``batch_syn_max`` (the same rows for the matching
        loss and the CMI of this image step)."""
        images, labels = synthetic.decode([c])
        return subsample_rows(images, labels, self.config.batch_syn_max,
                              generator(self.seed, "idc-syn", step, substep, c))

    def regularizer_inputs(self, synthetic: Parametrization, classes: Sequence[int], step: int,
                           substep: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._syn_batch(synthetic, c, step, substep) for c in classes]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def regularizer_draw(self, step: int, substep: int) -> tuple[int, ...]:
        """IDC draws a proxy at every image step."""
        return (step, substep)

    def _logits(self, x: torch.Tensor, twice_differentiable: bool = False) -> torch.Tensor:
        net = self.net if twice_differentiable else self._compiled
        with autocast(self.device, self.precision):
            return net(x.contiguous(memory_format=self.memory_format)).float()

    def losses(self, synthetic: Parametrization, classes: Sequence[int], step: int,
               substep: int) -> dict[str, torch.Tensor]:
        self.net.train()
        total = torch.zeros((), device=self.device)
        for c in classes:
            syn, syn_labels = self._syn_batch(synthetic, c, step, substep)
            real = self.real.sample(c, self.config.batch_real, generator(self.seed, "idc-real", step, substep, c),
                                    self.device)
            n = len(real)
            if self.match_augment.enabled:  # one draw for the whole [real; synthetic] batch
                params = self.match_augment.sample(0, tuple(syn.shape[-2:]),
                                                   generator(self.seed, "idc-aug", step, substep, c), per_sample=False)
                both = apply(torch.cat([real, syn]), params)
                real, syn = both[:n].detach(), both[n:]
            real_labels = torch.full((n,), c, dtype=torch.long, device=self.device)
            real_loss = F.cross_entropy(self._logits(real), real_labels)
            real_grads = [g.detach() for g in torch.autograd.grad(real_loss, self.matched)]
            syn_loss = F.cross_entropy(self._logits(syn, twice_differentiable=True), syn_labels.to(self.device))
            syn_grads = torch.autograd.grad(syn_loss, self.matched, create_graph=True)
            total = total + match_distance(syn_grads, real_grads, self.config.dis_metric)
        return {"matching_loss": total}

    def after_image_step(self, synthetic: Parametrization, step: int, substep: int) -> None:
        """One network epoch of ``n_data`` real images in batches of ``batch_real`` (identical everywhere)."""
        c = self.config
        if c.n_data == 0:
            return
        rng = generator(self.seed, "idc-epoch", step, substep)
        batches = -(-c.n_data // c.batch_real)
        order = torch.randperm(len(self.real), generator=rng)[:batches * c.batch_real]
        self.net.train()
        for start in range(0, len(order), c.batch_real):
            positions = order[start:start + c.batch_real]
            x, y = self.real.images(positions, self.device), self.real.labels[positions].to(self.device)
            if self.net_augment.enabled:
                x = self.net_augment(x, rng)
            partner, lam = None, 1.0
            if c.mix_p > 0 and float(torch.rand((), generator=rng)) < c.mix_p:
                x, partner, lam = cutmix(x, y, rng)
            logits = self._logits(x)
            loss = F.cross_entropy(logits, y)
            if partner is not None:
                loss = lam * loss + (1.0 - lam) * F.cross_entropy(logits, partner)
            self.net_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.net_optimizer.step()

    def describe(self) -> dict:
        return {**super().describe(),
                "lr_img": self.lr_img}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "net_optimizer": self.net_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.net_optimizer.load_state_dict(state["net_optimizer"])
