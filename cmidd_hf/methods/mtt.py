"""Matching training trajectories (MTT, Cazenavette et al., CVPR 2022; the official ``distill.py``).

Each iteration, for each of ``trajectories`` work units: an expert and a start epoch below ``max_start_epoch``
drawn from (seed, step, unit); a student starting from the expert's parameters at that epoch takes ``syn_steps``
SGD steps of a learnable size (``syn_lr``, initialized to ``lr_teacher``) on minibatches of ``batch_syn``
synthetic images (the official chunking of a random permutation, taken from the end; per-sample DSA);
the loss is ``||θ_student - θ_expert(start + expert_epochs)||² / ||θ_expert(start) - θ_expert(start +
expert_epochs)||²`` (the official per-parameter means cancel), averaged over the units. Images and ``syn_lr``
are learned by SGD with momentum 0.5 (``lr_img``, ``lr_lr``: one optimizer, two groups — the official two
optimizers do the same). The learned ``syn_lr`` is the evaluation's learning rate.

``gradient``: ``unrolled`` differentiates through the unrolled student (memory grows with ``syn_steps``);
``recompute`` gives the same gradient with one step's graph at a time: the student's parameters after every
step are kept (one vector each), then a reverse sweep recomputes each step and applies its vector-Jacobian
product (the adjoint method; TESLA, ICML 2023, bounds memory the same way).

Work units are independent, so the method declares ``Sharding.DATA``: processes split the trajectories (and
the CMI term) and share gradients. The student runs eager (it is differentiated twice) at the run's precision; with
``compile`` on, the double backward of its instance norms is compiled (:mod:`cmidd_hf.models.instance_norm`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..artifacts.experts import ExpertError, ExpertRecipe, ExpertTrajectories, resolve_experts
from ..artifacts.resolver import ArtifactError, is_folder_spec, parse_spec
from ..data.augment import AugmentParams, DiffAugment, apply
from ..engine.gradients import loss_with_gradients
from ..engine.method import (
    DistillationMethod,
    MethodArtifacts,
    MethodConfig,
    MethodConfigError,
    MethodContext,
    Sharding,
    register_method,
)
from ..engine.parametrization import Parametrization
from ..engine.precision import autocast, resolve_precision
from ..engine.seeding import generator
from ..models import build_network
from ..models.layers import fuse_double_backward
from .base import check_strategy, resolve_strategy


@dataclass
class MTTConfig(MethodConfig):
    """MTT settings (official ``distill.py`` defaults)."""

    _argument_group_name: ClassVar[str] = "MTT"

    lr_img: float = field(default=1000.0, metadata={"help": "learning rate of the synthetic images"})
    experts: str = field(default="", metadata={
        "help": "expert trajectories: local-dir:/path or hf-hub:org/name[@revision] (scripts/train_experts.py), "
                "or {train: {arch, num_experts, epochs, zca, ...}} (YAML; a flow mapping on the command line) to "
                "train them once and cache"})
    expert_cache_dir: str = field(default="outputs/expert-cache", metadata={"help": "where train: experts go"})
    syn_steps: int = field(default=20, metadata={"help": "student steps on the synthetic set per trajectory"})
    expert_epochs: int = field(default=3, metadata={"help": "expert epochs the student must cover"})
    max_start_epoch: int = field(default=25, metadata={"help": "start epochs are drawn from 0..max_start_epoch-1"})
    lr_lr: float = field(default=1e-5, metadata={"help": "learning rate of the learnable step size"})
    lr_teacher: float = field(default=0.01, metadata={"help": "initial learnable step size (the experts' lr)"})
    batch_syn: int | None = field(default=None, metadata={"help": "synthetic images per student step "
                                                                  "(default: the whole set)"})
    zca: bool = field(default=False, metadata={"help": "the experts were trained on ZCA-whitened images "
                                                       "(checked against the experts)"})
    dsa_strategy: str = field(default="auto", metadata={"help": "DSA ops joined by _, 'none', or 'auto' (the "
                                                                "dataset's default: no flip for digits)"})
    trajectories: int = field(default=1, metadata={"help": "trajectories matched per iteration (averaged; split "
                                                           "over processes)"})
    gradient: str = field(default="unrolled", metadata={
        "help": "unrolled (memory grows with syn_steps) or recompute (the same gradient, one step's graph at a "
                "time)", "choices": ["unrolled", "recompute"]})

    def validate(self) -> None:
        super().validate()
        for name in ("syn_steps", "expert_epochs", "max_start_epoch", "trajectories"):
            if getattr(self, name) < 1:
                raise MethodConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.batch_syn is not None and self.batch_syn < 1:
            raise MethodConfigError(f"batch_syn={self.batch_syn}: must be >= 1 (or unset for the whole set)")
        if self.lr_lr <= 0 or self.lr_teacher <= 0:
            raise MethodConfigError(f"lr_lr={self.lr_lr}, lr_teacher={self.lr_teacher}: both must be > 0")
        if self.gradient not in ("unrolled", "recompute"):
            raise MethodConfigError(f"gradient={self.gradient!r}: choose unrolled or recompute")
        check_strategy("dsa_strategy", self.dsa_strategy)
        try:  # --experts '{train: {...}}' on the command line
            self.experts = parse_spec("experts", self.experts)
        except ArtifactError as err:
            raise MethodConfigError(str(err)) from None
        if isinstance(self.experts, Mapping):
            try:
                recipe = ExpertRecipe.from_mapping(self.experts["train"] or {})
            except ExpertError as err:
                raise MethodConfigError(f"experts: {err}") from None
            if recipe.zca != self.zca:
                raise MethodConfigError(f"zca={self.zca} but the experts train: spec has zca={recipe.zca}; make "
                                        "them agree")
            check_expert_epochs(self, recipe.epochs)
        elif not is_folder_spec(self.experts):
            raise MethodConfigError(f"experts={self.experts!r}: name the expert trajectories as local-dir:/path or "
                                    "hf-hub:org/name (train them with scripts/train_experts.py), or give a train: "
                                    "spec in the YAML config")

    def identity(self) -> dict:
        return {**super().identity(), "experts": str(self.experts), "zca": self.zca}

    def augmentation(self, dataset_name: str) -> str | None:
        return resolve_strategy(self.dsa_strategy, dataset_name)


def check_expert_epochs(config: MTTConfig, epochs: int) -> None:
    """The latest target epoch, ``max_start_epoch - 1 + expert_epochs``, must exist in the experts."""
    last = config.max_start_epoch - 1 + config.expert_epochs
    if last > epochs:
        raise MethodConfigError(f"max_start_epoch={config.max_start_epoch} and expert_epochs={config.expert_epochs} "
                                f"need expert epoch {last} but the experts have {epochs}; lower them or use longer "
                                "experts")


@dataclass
class TrajectoryPlan:
    """The random draws of one trajectory: expert, start epoch, and each student step's images and DSA."""

    expert: int
    start: int
    batches: list[torch.Tensor]
    augmentations: list[AugmentParams | None]


@register_method
class MTT(DistillationMethod):
    """Trajectory matching; see the module docstring."""

    name = "mtt"
    config_class = MTTConfig
    sharding = Sharding.DATA

    @classmethod
    def resolve_artifacts(cls, config: MTTConfig, data, progress: bool = True, compile: bool = True) -> MethodArtifacts:
        """The experts (trained once into ``expert_cache_dir`` for a train: spec), checked against the data and
        the settings; their ZCA transform, if any, becomes the run's data transform."""
        experts = resolve_experts(config.experts, data, config.expert_cache_dir, data.name, progress, compile)
        check_expert_epochs(config, experts.epochs)
        if config.zca != (experts.transform is not None):
            trained = "ZCA-whitened" if experts.transform is not None else "plain normalized"
            raise MethodConfigError(f"zca={config.zca} but the experts were trained on {trained} images; set "
                                    f"zca={experts.transform is not None} or use other experts")
        return MethodArtifacts(items={"experts": experts}, transform=experts.transform,
                               provenance={"experts": experts.describe()})

    def __init__(self, config: MTTConfig, context: MethodContext) -> None:
        super().__init__(config, context)
        experts: ExpertTrajectories | None = context.artifacts.get("experts")
        if experts is None:
            raise MethodConfigError("MTT needs its experts: build it with the artifacts of MTT.resolve_artifacts")
        real = context.real
        self.experts = experts
        self.student = build_network(experts.arch, real.num_classes, real.image_shape[0],
                                     real.image_shape[1:]).to(self.device)
        self.student.requires_grad_(False)
        self.student.train()
        fuse_double_backward(self.student, context.compile)
        shapes = [(name, list(p.shape)) for name, p in self.student.named_parameters()]
        if shapes != experts.parameters:
            raise MethodConfigError(f"the experts' parameters {experts.parameters[:2]}... do not match a "
                                    f"{experts.arch} for this dataset {shapes[:2]}...; use experts of this dataset")
        self.shapes = [(name, torch.Size(shape)) for name, shape in shapes]
        self.sizes = [s.numel() for _, s in self.shapes]
        self.syn_lr = nn.Parameter(torch.tensor(float(config.lr_teacher), device=self.device))
        self.augment = DiffAugment(context.augmentation)
        self.set_size = real.num_classes * context.ipc
        self.batch_syn = min(config.batch_syn or self.set_size, self.set_size)
        self.precision = resolve_precision(context.precision, self.device)

    # ------------------------------------------------------------------ engine hooks

    @property
    def work_units(self) -> int:
        return self.config.trajectories

    def make_optimizer(self, synthetic: Parametrization):
        groups = [{"params": list(synthetic.parameters()), "lr": self.config.lr_img},
                  {"params": [self.syn_lr], "lr": self.config.lr_lr}]
        return torch.optim.SGD(groups, lr=self.config.lr_img, momentum=self.config.momentum_img), None

    def losses(self, synthetic: Parametrization, classes: Sequence[int], step: int,
               substep: int) -> dict[str, torch.Tensor]:
        images, labels = synthetic.decode()
        total = sum(self.trajectory_loss(images, labels, self.plan(step, unit, tuple(images.shape[-2:])))
                    for unit in classes)
        return {"matching_loss": total / self.config.trajectories}

    def evaluation_overrides(self) -> dict[str, Any]:
        return {"lr": float(self.syn_lr.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"syn_lr": self.syn_lr.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.syn_lr.copy_(state["syn_lr"])

    def describe(self) -> dict:
        return {**asdict(self.config), "experts": self.experts.describe(), "batch_syn": self.batch_syn,
                "learned_lr": float(self.syn_lr.detach())}

    # ------------------------------------------------------------------ trajectories

    def plan(self, step: int, unit: int, image_size: tuple[int, int]) -> TrajectoryPlan:
        """Every draw of trajectory ``unit`` at iteration ``step``, from (seed, step, unit)."""
        g = generator(self.seed, "mtt", step, unit)
        expert = int(torch.randint(self.experts.num_experts, (1,), generator=g))
        start = int(torch.randint(self.config.max_start_epoch, (1,), generator=g))
        batches, augmentations, chunks = [], [], []
        for _ in range(self.config.syn_steps):
            if not chunks:
                chunks = list(torch.randperm(self.set_size, generator=g).split(self.batch_syn))
            batch = chunks.pop()
            batches.append(batch)
            augmentations.append(self.augment.sample(len(batch), image_size, g) if self.augment.enabled else None)
        return TrajectoryPlan(expert, start, batches, augmentations)

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The student with parameters ``flat`` (the experts' layout) on ``x``."""
        params = {name: t.view(shape) for (name, shape), t in zip(self.shapes, flat.split(self.sizes), strict=True)}
        return torch.func.functional_call(self.student, params, (x,))

    def _step_loss(self, flat: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, plan: TrajectoryPlan,
                   t: int) -> torch.Tensor:
        batch = plan.batches[t].to(images.device)
        x = images[batch]
        if plan.augmentations[t] is not None:
            x = apply(x, plan.augmentations[t])
        with autocast(self.device, self.precision):
            return F.cross_entropy(self._logits(flat, x), labels[batch])

    def _endpoints(self, plan: TrajectoryPlan, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        snapshots = self.experts.snapshots(plan.expert, (plan.start, plan.start + self.config.expert_epochs))
        snapshots = snapshots.to(self.device, dtype)
        return snapshots[0], snapshots[1]

    def trajectory_loss(self, images: torch.Tensor, labels: torch.Tensor, plan: TrajectoryPlan) -> torch.Tensor:
        """The normalized parameter distance of one trajectory, differentiable in ``images`` and ``syn_lr``."""
        start, target = self._endpoints(plan, images.dtype)
        if self.config.gradient == "recompute":
            return self._recomputed_loss(images, labels, plan, start, target)
        theta = start.clone().requires_grad_(True)
        for t in range(self.config.syn_steps):
            grad = torch.autograd.grad(self._step_loss(theta, images, labels, plan, t), theta, create_graph=True)[0]
            theta = theta - self.syn_lr * grad
        return ((theta - target) ** 2).sum() / ((start - target) ** 2).sum()

    def _recomputed_loss(self, images: torch.Tensor, labels: torch.Tensor, plan: TrajectoryPlan,
                         start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The unrolled loss's value and exact gradient with one student step's graph alive at a time."""
        steps, lr = self.config.syn_steps, self.syn_lr.detach()
        frozen = images.detach()
        thetas = [start]
        for t in range(steps):  # forward: keep θ_t, drop every graph
            theta = thetas[-1].detach().requires_grad_(True)
            grad = torch.autograd.grad(self._step_loss(theta, frozen, labels, plan, t), theta)[0]
            thetas.append((theta - lr * grad).detach())
        distance = ((start - target) ** 2).sum()
        value = ((thetas[-1] - target) ** 2).sum() / distance
        adjoint = 2 * (thetas[-1] - target) / distance  # dL/dθ_T
        images_leaf = frozen.clone().requires_grad_(True)
        lr_leaf = lr.clone().requires_grad_(True)
        grad_images, grad_lr = torch.zeros_like(frozen), torch.zeros_like(lr)
        for t in reversed(range(steps)):  # reverse: the vector-Jacobian product of θ_{t+1} = θ_t - α g_t
            theta = thetas[t].requires_grad_(True)
            grad = torch.autograd.grad(self._step_loss(theta, images_leaf, labels, plan, t), theta,
                                       create_graph=True)[0]
            adjoint, d_images, d_lr = torch.autograd.grad(theta - lr_leaf * grad, (theta, images_leaf, lr_leaf),
                                                          grad_outputs=adjoint)
            grad_images += d_images
            grad_lr += d_lr
            thetas[t + 1] = None  # θ_{t+1} is no longer needed
        return loss_with_gradients(value, (images, self.syn_lr), (grad_images, grad_lr))
