"""Evaluation protocols: how fresh networks are trained on a set (method-spec §5), as registered classes.

A protocol is an :class:`EvalProtocol` (optimizer, schedule, augmentation, mixing, loss) registered by name
with :func:`register_protocol`; ``get_protocol(name, **overrides)`` returns a copy with fields overridden.

* ``dsa`` (DC/DSA/DM): SGD 0.01, momentum 0.9, wd 5e-4, batch 256, 1000 epochs, lr x0.1 at half,
  per-sample DSA (one group per batch), last-epoch test accuracy.
* ``dc``: the same for 300 epochs without augmentation.
* ``idc``: batch 64, MultiStep at 2/3 and 5/6 with gamma 0.2, IDC-style DSA without cutout plus CutMix p=0.5.
* ``kd`` (:class:`KDProtocol`, SRe2L's CIFAR relabel, ``small_dataset/relabel_cifar.py``): the student learns
  KL(teacher ‖ student) at temperature 30 on every augmented, mixed batch (``KLDivLoss(batchmean)`` of the
  temperature-softened outputs, no T² factor, as the authors); AdamW lr 1e-3, wd 0.01, cosine over 400
  epochs, batch 128, mixup α 0.8 on every batch, random shift by up to 1/8 of the side (DSA's crop: the
  authors' RandomCrop with 4 px padding at 32 px, zero-filled in normalized space here) + flip. The teacher
  is a network given to the evaluation (the method's, or ``eval_teacher``).
* ``kd_imagenet``: SRe2L's ImageNet KD validation (``validate/train_KD.sh``): T = 20, 300 epochs, batch 1024,
  CutMix on every batch (the teacher labels the mixed batch); the authors' random-resized crop is DSA's
  scale + crop + flip here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..data.augment import DSA_STRATEGY


@dataclass(frozen=True)
class EvalProtocol:
    """How an evaluation network is trained (hard labels, cross-entropy)."""

    name: str
    epochs: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    milestones: tuple[float, ...] = (0.5,)  # fractions of ``epochs`` at which lr is multiplied by gamma
    gamma: float = 0.1
    augmentation: str | None = DSA_STRATEGY
    augmentation_mode: str = "dsa"
    cutmix_prob: float = 0.0
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw"
    schedule: str = "multistep"  # "multistep" (milestones, gamma) or "cosine" (to 0 over the epochs)
    mixup_alpha: float = 0.0  # > 0: every batch mixed with a permutation of itself, weight ~ Beta(alpha, alpha)

    @property
    def requires_teacher(self) -> bool:
        return False

    def milestone_epochs(self) -> list[int]:
        return [int(self.epochs * f) for f in self.milestones]

    def make_optimizer(self, parameters) -> torch.optim.Optimizer:
        if self.optimizer == "adamw":
            return torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Stepped once per epoch."""
        if self.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, self.milestone_epochs(), gamma=self.gamma)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None
             ) -> torch.Tensor:
        """The training loss of a batch (mixing and CutMix are applied by the trainer around it)."""
        return F.cross_entropy(logits, labels)

    def check(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.optimizer not in ("sgd", "adamw") or self.schedule not in ("multistep", "cosine"):
            raise ValueError(f"protocol {self.name!r}: optimizer must be sgd or adamw, schedule multistep or cosine")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")


@dataclass(frozen=True)
class KDProtocol(EvalProtocol):
    """Knowledge distillation from a teacher: KL(softmax(t/T) ‖ softmax(s/T)), batch mean, on the batch the
    student sees (augmented and mixed), so labels are not used by the loss."""

    temperature: float = 30.0

    @property
    def requires_teacher(self) -> bool:
        return True

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None
             ) -> torch.Tensor:
        if teacher_logits is None:
            raise ValueError(f"protocol {self.name!r} needs the teacher's logits")
        t = self.temperature
        return F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(teacher_logits.float() / t, dim=1),
                        reduction="batchmean")

    def check(self) -> None:
        super().check()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


PROTOCOLS: dict[str, EvalProtocol] = {}


def register_protocol(protocol: EvalProtocol) -> EvalProtocol:
    """Make ``protocol`` available as ``get_protocol(protocol.name)`` (and as ``eval_protocol`` in recipes)."""
    protocol.check()
    PROTOCOLS[protocol.name] = protocol
    return protocol


register_protocol(EvalProtocol("dsa", epochs=1000))
register_protocol(EvalProtocol("dc", epochs=300, augmentation=None))
register_protocol(EvalProtocol(
    "idc", epochs=1000, batch_size=64, milestones=(2 / 3, 5 / 6), gamma=0.2,
    augmentation="color_crop_flip_scale_rotate", augmentation_mode="idc", cutmix_prob=0.5))
register_protocol(KDProtocol(
    "kd", epochs=400, lr=1e-3, weight_decay=0.01, batch_size=128, milestones=(), optimizer="adamw",
    schedule="cosine", augmentation="crop_flip", mixup_alpha=0.8, temperature=30.0))
register_protocol(KDProtocol(
    "kd_imagenet", epochs=300, lr=1e-3, weight_decay=0.01, batch_size=1024, milestones=(), optimizer="adamw",
    schedule="cosine", augmentation="crop_flip_scale", cutmix_prob=1.0, temperature=20.0))


def get_protocol(name: str | EvalProtocol, **overrides) -> EvalProtocol:
    """A registered protocol with fields overridden (``None`` values are ignored), e.g. ``epochs=300``."""
    protocol = name if isinstance(name, EvalProtocol) else PROTOCOLS.get(name)
    if protocol is None:
        raise ValueError(f"unknown protocol={name!r}; choose one of {sorted(PROTOCOLS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if protocol.augmentation is None:
        overrides.pop("augmentation", None)  # 'dc' trains without augmentation whatever the dataset
    protocol = replace(protocol, **overrides)
    protocol.check()
    return protocol
