"""The network trainer behind evaluation and proxy training: one compiled network per architecture,
re-initialized per run, trained on a tensor or a real-image store.

Differences from the official loop, on purpose: exactly ``epochs`` epochs (the official loop runs one more) and
a scheduler step instead of re-creating the optimizer at the decay (momentum carries over).
Reported accuracy is always the last epoch's; an optional validation store is reported alongside, and no
selection ever looks at the test split.

Speed: tiny training sets stay one tensor (no DataLoader); the network is built once per architecture,
compiled once, and receives a freshly seeded initialization for each run; bf16 autocast where the hardware
has native bf16 (:mod:`cmidd_hf.engine.precision`) and channels-last;
on CPU, freed activation memory is reused across steps instead of being page-faulted in again
(:mod:`cmidd_hf.engine.cpu_memory`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..data.augment import DiffAugment, cutmix, mixup
from ..data.loading import RealImageStore
from ..engine.cpu_memory import reuse_freed_memory
from ..engine.precision import autocast, resolve_precision
from ..models import build_network
from .protocols import EvalProtocol


@dataclass(frozen=True)
class EpochStats:
    """One training epoch, measured on the batches the network trained on (augmented, before the step).

    The sums stay on the device until ``loss`` or ``accuracy`` is read, so a consumer that only counts epochs
    never waits for the device."""

    epoch: int  # 1-based
    loss_sum: torch.Tensor  # summed cross-entropy over the epoch's images (CutMix: the mixed loss)
    correct: torch.Tensor  # images whose top-1 prediction is their own (hard, or argmax of the soft) label
    images: int

    @property
    def loss(self) -> float:
        return float(self.loss_sum) / self.images

    @property
    def accuracy(self) -> float:
        return int(self.correct) / self.images


# ------------------------------------------------------------------------------------------ training sets


class TensorSet:
    """A small training set held as one normalized tensor, with class indices [N] or soft labels [N, C] (the
    cross-entropy of hard-label protocols then takes the probability rows as its targets)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device) -> None:
        self.images = images.detach().to(device, torch.float32)
        labels = labels.detach().to(device)
        self.labels = labels.float() if labels.dim() == 2 else labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The set in ``order``, ``batch_size`` at a time."""
        order = order.to(self.images.device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield self.images[idx], self.labels[idx]


class StoreSet:
    """Training images read from a real-image store batch by batch (whole dataset, proxies, experts, teachers);
    a streamed store decodes them in its DataLoader workers."""

    def __init__(self, store: RealImageStore, positions: torch.Tensor | None, device) -> None:
        self.store, self.device = store, device
        self.positions = torch.arange(len(store)) if positions is None else positions

    def __len__(self) -> int:
        return len(self.positions)

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The set in ``order``, ``batch_size`` at a time."""
        positions = self.positions[order]
        return self.store.batches(list(positions.split(batch_size)), self.device)


# ------------------------------------------------------------------------------------------ the trainer


RECOMPILE_LIMIT = 64


class NetworkTrainer:
    """Trains and tests fresh networks of one architecture, reusing one (compiled) module across runs."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        image_shape: tuple[int, int, int],
        protocol: EvalProtocol,
        device: torch.device | str | None = None,
        precision: str = "auto",
        compile: bool = False,
        teacher: nn.Module | None = None,
    ) -> None:
        if protocol.requires_teacher and teacher is None:
            raise ValueError(f"protocol {protocol.name!r} trains against a teacher's outputs: pass teacher=")
        self.arch, self.num_classes, self.image_shape, self.protocol = arch, num_classes, image_shape, protocol
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        # channels-last pays off only once inductor fuses the elementwise ops (eager bf16 gets slower)
        self.memory_format = torch.channels_last if compile else torch.contiguous_format
        self.model = self._fresh(seed=0).to(self.device, memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if compile else self.model
        self.augment = DiffAugment(protocol.augmentation, mode=protocol.augmentation_mode)
        self.teacher = None
        if protocol.requires_teacher:
            self.teacher = teacher.to(self.device).eval().requires_grad_(False)

    def _fresh(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_network(self.arch, self.num_classes, self.image_shape[0], self.image_shape[1:])

    def _run(self, x: torch.Tensor, network: nn.Module | None = None) -> torch.Tensor:
        """The network's (or ``network``'s) logits under autocast. Every architecture built on
        ``FeatureClassifier`` shares one ``forward`` code object, so dynamo's per-code recompile limit (8) is
        raised here: evaluating several architectures (x train/eval, x last partial batch) must not silently
        fall back to eager."""
        with autocast(self.device, self.precision), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return (self.forward if network is None else network)(x)

    def reset(self, seed: int) -> None:
        """Give the persistent module the exact initialization a newly built network of ``seed`` has."""
        self.model.load_state_dict(self._fresh(seed).state_dict())

    def train(self, train_set, seed: int, progress: Callable[[EpochStats], None] | None = None) -> None:
        """Train a freshly initialized network (``seed``); ``progress`` is called after every epoch."""
        p = self.protocol
        self.reset(seed)
        self.model.train()
        generator = torch.Generator().manual_seed(seed)
        optimizer = p.make_optimizer(self.model.parameters())
        scheduler = p.make_scheduler(optimizer)
        with reuse_freed_memory(self.device.type == "cpu"):
            self._epochs(train_set, optimizer, scheduler, generator, progress)

    def _epochs(self, train_set, optimizer, scheduler, generator: torch.Generator,
                progress: Callable[[EpochStats], None] | None) -> None:
        p = self.protocol
        n = len(train_set)
        for epoch in range(1, p.epochs + 1):
            order = torch.randperm(n, generator=generator)
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), dtype=torch.long, device=self.device)
            for x, y in train_set.batches(order, p.batch_size):
                if self.augment.enabled:
                    x = self.augment(x, generator)
                partner, lam = None, 1.0
                if p.mixup_alpha > 0:
                    x, partner, lam = mixup(x, y, p.mixup_alpha, generator)
                if p.cutmix_prob > 0 and float(torch.rand((), generator=generator)) < p.cutmix_prob:
                    x, partner, lam = cutmix(x, y, generator)
                x = x.contiguous(memory_format=self.memory_format)
                logits = self._run(x).float()
                if self.teacher is not None:  # the teacher labels the batch the student sees, mixed or not
                    with torch.no_grad():
                        teacher_logits = self._run(x, self.teacher).float()
                    loss = p.loss(logits, y, teacher_logits)
                else:
                    loss = p.loss(logits, y)
                    if partner is not None:
                        loss = lam * loss + (1.0 - lam) * p.loss(logits, partner)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(dim=1) == (y.argmax(dim=1) if y.dim() == 2 else y)).sum()
            scheduler.step()
            if progress is not None:
                progress(EpochStats(epoch, loss_sum, correct, n))

    @torch.no_grad()
    def accuracy(self, store: RealImageStore, batch_size: int = 500) -> float:
        """Top-1 accuracy of the current network on every image of ``store`` (eval mode)."""
        self.model.eval()
        correct = 0
        with reuse_freed_memory(self.device.type == "cpu"):
            for x, labels in store.batches(list(torch.arange(len(store)).split(batch_size)), self.device):
                pred = self._run(x.contiguous(memory_format=self.memory_format)).argmax(dim=1)
                correct += int((pred == labels).sum())
        return correct / len(store)
