"""IDM: improved distribution matching (Zhao et al., CVPR 2023), as the public code ``uitrbn/IDM`` runs it
with the paper settings of its ``command.txt`` (README, "IDM").

DM on a multi-formation set ("partitioning and expansion": each stored image holds factor² downscaled
images and decodes into them) with a pool of networks trained on real data:

* the pool starts with ``initial_nets`` random networks; every ``net_generate_interval`` iterations (from
  iteration 0) a new random network joins it, the oldest leaving once it holds ``net_num``;
* each iteration draws ``train_net_num`` networks of the pool; with each, every class takes one image step on
  ``||mean embed(real_c) − mean embed(syn_c)||²`` (one siamese DSA draw per class) plus ``ce_weight`` times
  the cross-entropy of the augmented synthetic images under that network, weighted by the network's running
  training accuracy in percent (the official ``acc_meter`` weight, reset every ``accuracy_reset_interval``
  iterations as the official evaluation interval does);
* then ``fetch_net_num`` random networks of the pool each take ``model_train_steps`` SGD steps on random real
  batches of ``batch_train``.

The pool (weights, momentum, accuracy counts, ages) is the method's state: seeded, identical on every
process, saved with every checkpoint. One working module (compiled once) runs whichever pool member is
needed; the members are plain tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
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
from ..engine.optim import ClassSequentialSGD
from ..engine.parametrization import MultiFormationParametrization, Parametrization, PixelParametrization
from ..engine.precision import autocast, resolve_precision
from ..engine.seeding import derive_seed, generator
from ..models import build_network
from .base import (
    check_architecture,
    check_mix_init,
    check_net_sgd,
    check_per_class_counts,
    check_strategy,
    mix_image_counts,
    reset_in_place,
    resettable_modules,
    resolve_strategy,
)


@dataclass
class IDMConfig(MethodConfig):
    """IDM settings (``command.txt``, CIFAR-10 IPC 10: lr_img 0.2, ce_weight 0.5, one matching network, the
    repository's defaults for the pool: 100 networks, a new one every 30 iterations, 2 trained per iteration
    for 10 steps of 256 real images, SGD 0.01 / 0.9 / 5e-4 with ``--net_decay``)."""

    _argument_group_name: ClassVar[str] = "IDM"

    lr_img: float = field(default=0.2, metadata={"help": "learning rate of the stored images"})
    init: str = field(default="mix", metadata={"help": "mix: factor² downscaled real images per stored image "
                                                       "(IDM --aug); real; noise", "choices": ["mix", "real",
                                                                                               "noise"]})
    factor: int = field(default=2, metadata={"help": "each stored image decodes into factor² images"})
    batch_real: int = field(default=256, metadata={"help": "real images per class per image step"})
    net_arch: str = field(default="convnet3", metadata={"help": "architecture of the pool's networks"})
    dsa_strategy: str = field(default="auto", metadata={"help": "DSA ops joined by _, 'none', or 'auto' (the "
                                                                "dataset's default: no flip for digits)"})
    ce_weight: float = field(default=0.5, metadata={"help": "weight of the accuracy-weighted cross-entropy "
                                                            "on the synthetic images (0: off)"})
    net_num: int = field(default=100, metadata={"help": "largest pool size"})
    initial_nets: int = field(default=3, metadata={"help": "random networks in the pool before iteration 0"})
    net_generate_interval: int = field(default=30, metadata={"help": "a new network joins every N iterations"})
    train_net_num: int = field(default=1, metadata={"help": "pool networks used for matching per iteration "
                                                            "(each one image step for every class)"})
    fetch_net_num: int = field(default=2, metadata={"help": "pool networks trained per iteration"})
    model_train_steps: int = field(default=10, metadata={"help": "SGD steps of each trained network"})
    batch_train: int = field(default=256, metadata={"help": "real images per network training step"})
    lr_net: float = field(default=0.01, metadata={"help": "network SGD learning rate"})
    momentum_net: float = field(default=0.9, metadata={"help": "network SGD momentum"})
    weight_decay_net: float = field(default=5e-4, metadata={"help": "network SGD weight decay (--net_decay)"})
    accuracy_reset_interval: int = field(default=100, metadata={"help": "iterations between resets of the "
                                                                        "networks' accuracy (CE weight)"})
    per_class_steps: bool = field(default=True, metadata={"help": "reproduce the official one image step per "
                                                                  "class (momentum of the other classes' steps)"})

    def validate(self) -> None:
        super().validate()
        for name in ("factor", "batch_real", "net_num", "initial_nets", "net_generate_interval", "train_net_num",
                     "batch_train", "accuracy_reset_interval"):
            if getattr(self, name) < 1:
                raise MethodConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        for name in ("fetch_net_num", "model_train_steps"):
            if getattr(self, name) < 0:
                raise MethodConfigError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.initial_nets > self.net_num:
            raise MethodConfigError(f"initial_nets={self.initial_nets} exceeds net_num={self.net_num}")
        if self.train_net_num > self.initial_nets:
            raise MethodConfigError(f"train_net_num={self.train_net_num} exceeds the initial pool "
                                    f"(initial_nets={self.initial_nets})")
        if self.ce_weight < 0:
            raise MethodConfigError(f"ce_weight={self.ce_weight}: must be >= 0")
        check_net_sgd(self.lr_net, self.momentum_net, self.weight_decay_net)
        check_mix_init(self.init, self.factor)
        check_architecture("net_arch", self.net_arch)
        check_strategy("dsa_strategy", self.dsa_strategy)

    def identity(self) -> dict:
        return {**super().identity(), "net_arch": self.net_arch, "factor": self.factor}

    def decoded_per_class(self, ipc: int) -> int:
        return ipc * self.factor**2

    def augmentation(self, dataset_name: str) -> str | None:
        return resolve_strategy(self.dsa_strategy, dataset_name)


@dataclass
class PoolMember:
    """One network of the pool as plain tensors: weights (and buffers), SGD momentum, training accuracy."""

    uid: int
    weights: dict[str, torch.Tensor]
    momentum: list[torch.Tensor | None]
    correct: int = 0
    seen: int = 0

    @property
    def accuracy_percent(self) -> float:
        return 100.0 * self.correct / self.seen if self.seen else 0.0

    def to_state(self) -> dict:
        return {"uid": self.uid, "weights": self.weights, "momentum": self.momentum, "correct": self.correct,
                "seen": self.seen}

    @classmethod
    def from_state(cls, state: dict) -> PoolMember:
        return cls(int(state["uid"]), dict(state["weights"]), list(state["momentum"]), int(state["correct"]),
                   int(state["seen"]))


@register_method
class IDM(DistillationMethod):
    """IDM (+ CMI through the engine's regularizer). The frozen real path and the pool's training run under
    bf16 autocast where the resolved precision is bf16."""

    name = "idm"
    config_class = IDMConfig
    sharding = Sharding.CLASS

    def __init__(self, config: IDMConfig, context: MethodContext) -> None:
        super().__init__(config, context)
        real = context.real
        check_per_class_counts(real, batch_real=config.batch_real,
                               **mix_image_counts(config.init, context.ipc, config.factor))
        if config.batch_train > len(real):
            raise MethodConfigError(f"batch_train={config.batch_train} exceeds the {len(real)} training images")
        self.real = real
        self.precision = resolve_precision(context.precision, self.device)
        self.augment = DiffAugment(context.augmentation)
        self.net = build_network(config.net_arch, real.num_classes, real.image_shape[0],
                                 real.image_shape[1:]).to(self.device)
        self.memory_format = torch.channels_last if context.compile else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self._compiled = torch.compile(self.net) if context.compile else self.net
        self._features_and_logits = (torch.compile(self._features_and_logits_eager) if context.compile
                                     else self._features_and_logits_eager)
        self._resettable = resettable_modules(self.net)
        self.params = list(self.net.parameters())
        self.pool: list[PoolMember] = []
        self.next_uid = 0
        self.picked: list[int] = []  # uids of this iteration's matching networks
        self._loaded: int | None = None  # uid whose weights the working module holds
        for _ in range(config.initial_nets):
            self._add_member()

    def _features_and_logits_eager(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The DM embedding (all feature layers, flattened: the official ``embed_last=1000``) and the logits."""
        feature_map = self.net.forward_features(x)
        return self.net.forward_head(feature_map, pre_logits=True), self.net.forward_head(feature_map)

    # ------------------------------------------------------------------ the pool

    def _add_member(self) -> None:
        """A fresh random network drawn from (seed, uid); the oldest leaves a full pool."""
        if len(self.pool) == self.config.net_num:
            self.pool.pop(0)
        reset_in_place(self._resettable, derive_seed(self.seed, "idm-net", self.next_uid))
        weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.pool.append(PoolMember(self.next_uid, weights, [None] * len(self.params)))
        self.next_uid += 1
        self._loaded = None

    def _member(self, uid: int) -> PoolMember:
        return next(m for m in self.pool if m.uid == uid)

    def _load(self, member: PoolMember) -> None:
        if self._loaded != member.uid:
            self.net.load_state_dict(member.weights)
            self._loaded = member.uid

    def _train_member(self, member: PoolMember, rng: torch.Generator) -> None:
        """``model_train_steps`` SGD steps on random real batches; updates the member's accuracy counts."""
        c = self.config
        self._load(member)
        optimizer = torch.optim.SGD(self.params, lr=c.lr_net, momentum=c.momentum_net,
                                    weight_decay=c.weight_decay_net)
        for p, buf in zip(self.params, member.momentum, strict=True):
            if buf is not None:
                optimizer.state[p]["momentum_buffer"] = buf.clone()
        self.net.train()
        for _ in range(c.model_train_steps):
            positions = torch.randperm(len(self.real), generator=rng)[:c.batch_train]
            x, y = self.real.images(positions, self.device), self.real.labels[positions].to(self.device)
            with autocast(self.device, self.precision):
                logits = self._compiled(x.contiguous(memory_format=self.memory_format)).float()
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            member.correct += int((logits.argmax(1) == y).sum())
            member.seen += len(y)
        member.weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        member.momentum = [None if (b := optimizer.state[p].get("momentum_buffer")) is None else b.detach().clone()
                           for p in self.params]

    # ------------------------------------------------------------------ engine hooks

    @property
    def image_steps_per_iteration(self) -> int:
        return self.config.train_net_num

    def init_synthetic(self) -> Parametrization:
        c, real, ipc = self.config, self.context.real, self.context.ipc
        if c.init == "mix":  # IDM --aug: downscaled bilinearly, stored normalized
            return MultiFormationParametrization.from_real_mix(real, ipc, c.factor, self.seed, unit_pixels=False,
                                                               mode="bilinear")
        plain = (PixelParametrization.from_real if c.init == "real" else PixelParametrization.from_noise)(
            real, ipc, self.seed)
        return MultiFormationParametrization(plain.images.detach(), real.num_classes, c.factor,
                                             real.mean.flatten().tolist(), real.std.flatten().tolist(),
                                             unit_pixels=False)

    def make_optimizer(self, synthetic: Parametrization):
        c = self.config
        drift = synthetic.num_classes - 1 if c.per_class_steps else 0
        return ClassSequentialSGD(synthetic.parameters(), lr=c.lr_img, momentum=c.momentum_img,
                                  drift_steps=drift), None

    def begin_iteration(self, synthetic: Parametrization, step: int) -> None:
        """Reset the accuracy counts on schedule, grow the pool on schedule, draw the matching networks."""
        c = self.config
        if step > 0 and step % c.accuracy_reset_interval == 0:
            for member in self.pool:
                member.correct = member.seen = 0
        if step % c.net_generate_interval == 0:
            self._add_member()
        order = torch.randperm(len(self.pool), generator=generator(self.seed, "idm-pick", step))
        self.picked = [self.pool[int(i)].uid for i in order[:c.train_net_num]]

    def losses(self, synthetic: Parametrization, classes: Sequence[int], step: int,
               substep: int) -> dict[str, torch.Tensor]:
        member = self._member(self.picked[substep])
        self._load(member)
        self.net.eval()  # as the official matching (no effect on instance-norm ConvNets)
        classes = list(classes)
        images, labels = synthetic.decode(classes)
        per_class = len(images) // max(len(classes), 1)
        height_width = tuple(images.shape[-2:])
        real_batches, syn_batches = [], []
        for i, c in enumerate(classes):
            real = self.real.sample(c, self.config.batch_real, generator(self.seed, "idm-real", step, substep, c),
                                    self.device)
            syn = images[i * per_class:(i + 1) * per_class]
            if self.augment.enabled:
                params = self.augment.sample(0, height_width, generator(self.seed, "idm-dsa", step, substep, c),
                                             per_sample=False)
                real, syn = apply(real, params), apply(syn, params)
            real_batches.append(real)
            syn_batches.append(syn)
        n = len(classes)
        with torch.no_grad(), autocast(self.device, self.precision):
            real_all = torch.cat(real_batches).contiguous(memory_format=self.memory_format)
            real_features, _ = self._features_and_logits(real_all)
            real_mean = real_features.float().view(n, self.config.batch_real, -1).mean(1)
        with autocast(self.device, self.precision):
            syn_all = torch.cat(syn_batches).contiguous(memory_format=self.memory_format)
            syn_features, logits = self._features_and_logits(syn_all)
        syn_mean = syn_features.float().view(n, per_class, -1).mean(1)
        matching = ((real_mean - syn_mean) ** 2).sum()
        ce = F.cross_entropy(logits.float(), labels.to(self.device), reduction="none").view(n, per_class).mean(1).sum()
        weight = self.config.ce_weight * member.accuracy_percent
        return {"matching_loss": matching, "ce_loss": weight * ce}

    def after_image_step(self, synthetic: Parametrization, step: int, substep: int) -> None:
        """After the iteration's last image step: ``fetch_net_num`` random pool networks train on real data."""
        if substep != self.image_steps_per_iteration - 1:
            return
        order = torch.randperm(len(self.pool), generator=generator(self.seed, "idm-fetch", step))
        for j, index in enumerate(order[:self.config.fetch_net_num].tolist()):
            self._train_member(self.pool[index], generator(self.seed, "idm-train", step, j))

    def describe(self) -> dict:
        return {**super().describe(), "pool_size": len(self.pool)}

    def state_dict(self) -> dict[str, Any]:
        return {"pool": [m.to_state() for m in self.pool], "next_uid": self.next_uid, "picked": list(self.picked)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool = [PoolMember.from_state(m) for m in state["pool"]]
        self.next_uid, self.picked = int(state["next_uid"]), [int(u) for u in state["picked"]]
        self._loaded = None
