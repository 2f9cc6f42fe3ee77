"""Train fresh networks on a (synthetic) training set and report their test accuracy (method-spec §5).

Protocols:

* ``dsa`` (DC/DSA/DM): SGD 0.01, momentum 0.9, wd 5e-4, batch 256, 1000 epochs, lr x0.1 at half,
  per-sample DSA (one group per batch), last-epoch test accuracy.
* ``dc``: the same for 300 epochs without augmentation.
* ``idc``: batch 64, MultiStep at 2/3 and 5/6 with gamma 0.2, IDC-style DSA without cutout plus CutMix p=0.5.

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

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data.augment import DSA_STRATEGY, DiffAugment, cutmix
from .data.loading import ImageClassificationData, RealImageStore
from .engine.cpu_memory import reuse_freed_memory
from .engine.precision import autocast, resolve_precision
from .models import build_network


@dataclass(frozen=True)
class EpochStats:
    """One training epoch, measured on the batches the network trained on (augmented, before the step).

    The sums stay on the device until ``loss`` or ``accuracy`` is read, so a consumer that only counts epochs
    never waits for the device."""

    epoch: int  # 1-based
    loss_sum: torch.Tensor  # summed cross-entropy over the epoch's images (CutMix: the mixed loss)
    correct: torch.Tensor  # images whose top-1 prediction is their own label
    images: int

    @property
    def loss(self) -> float:
        return float(self.loss_sum) / self.images

    @property
    def accuracy(self) -> float:
        return int(self.correct) / self.images


@dataclass(frozen=True)
class EvalProtocol:
    """How an evaluation network is trained."""

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

    def milestone_epochs(self) -> list[int]:
        return [int(self.epochs * f) for f in self.milestones]


PROTOCOLS: dict[str, EvalProtocol] = {
    "dsa": EvalProtocol("dsa", epochs=1000),
    "dc": EvalProtocol("dc", epochs=300, augmentation=None),
    "idc": EvalProtocol(
        "idc", epochs=1000, batch_size=64, milestones=(2 / 3, 5 / 6), gamma=0.2,
        augmentation="color_crop_flip_scale_rotate", augmentation_mode="idc", cutmix_prob=0.5,
    ),
}


def get_protocol(name: str | EvalProtocol, **overrides) -> EvalProtocol:
    """A protocol preset with fields overridden (``None`` values are ignored), e.g. ``epochs=300``."""
    protocol = name if isinstance(name, EvalProtocol) else PROTOCOLS.get(name)
    if protocol is None:
        raise ValueError(f"unknown protocol={name!r}; choose one of {sorted(PROTOCOLS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if protocol.augmentation is None:
        overrides.pop("augmentation", None)  # 'dc' trains without augmentation whatever the dataset
    protocol = replace(protocol, **overrides)
    if protocol.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {protocol.epochs}")
    return protocol


@dataclass
class EvaluationResult:
    """Accuracies (fractions in [0, 1]) of ``runs`` networks trained with one protocol."""

    arch: str
    protocol: str
    epochs: int
    accuracies: list[float]
    seeds: list[int]
    train_size: int
    validation_accuracies: list[float] | None = None
    protocol_config: dict = field(default_factory=dict)
    precision: str | None = None  # the resolved training precision, "bf16" or "fp32"

    @property
    def runs(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Population std over runs (ddof=0), as DC/DSA/DM report it."""
        return float(np.std(self.accuracies))

    def __str__(self) -> str:
        return (f"{self.arch} [{self.protocol}, {self.epochs} epochs, {self.runs} runs]: "
                f"{100 * self.mean:.2f} ± {100 * self.std:.2f} %")

    def to_dict(self) -> dict:
        """Plain-Python summary (safe for YAML cards and JSON logs)."""
        out = asdict(self)
        out.update(runs=self.runs, mean=round(self.mean, 6), std=round(self.std, 6))
        out["accuracies"] = [round(a, 6) for a in self.accuracies]
        if self.validation_accuracies is not None:
            out["validation_accuracies"] = [round(a, 6) for a in self.validation_accuracies]
        return out


# ------------------------------------------------------------------------------------------ training sets


class _TensorSet:
    """A small training set held as one normalized tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device) -> None:
        self.images = images.detach().to(device, torch.float32)
        self.labels = labels.detach().to(device).long()

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.images.device)
        return self.images[idx], self.labels[idx]


class _StoreSet:
    """Training images decoded from a real-image store batch by batch (whole-dataset baseline)."""

    def __init__(self, store: RealImageStore, positions: torch.Tensor | None, device) -> None:
        self.store, self.device = store, device
        self.positions = torch.arange(len(store)) if positions is None else positions

    def __len__(self) -> int:
        return len(self.positions)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = self.positions[idx]
        return self.store.images(pos, self.device), self.store.labels[pos].to(self.device)


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
    ) -> None:
        self.arch, self.num_classes, self.image_shape, self.protocol = arch, num_classes, image_shape, protocol
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        # channels-last pays off only once inductor fuses the elementwise ops (eager bf16 gets slower)
        self.memory_format = torch.channels_last if compile else torch.contiguous_format
        self.model = self._fresh(seed=0).to(self.device, memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if compile else self.model
        self.augment = DiffAugment(protocol.augmentation, mode=protocol.augmentation_mode)

    def _fresh(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_network(self.arch, self.num_classes, self.image_shape[0], self.image_shape[1:])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits under autocast. Every architecture built on ``FeatureClassifier`` shares one
        ``forward`` code object, so dynamo's per-code recompile limit (8) is raised here: evaluating several
        architectures (x train/eval, x last partial batch) must not silently fall back to eager."""
        with autocast(self.device, self.precision), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return self.forward(x)

    def reset(self, seed: int) -> None:
        """Give the persistent module the exact initialization a newly built network of ``seed`` has."""
        self.model.load_state_dict(self._fresh(seed).state_dict())

    def train(self, train_set, seed: int, progress: Callable[[EpochStats], None] | None = None) -> None:
        """Train a freshly initialized network (``seed``); ``progress`` is called after every epoch."""
        p = self.protocol
        self.reset(seed)
        self.model.train()
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=p.lr, momentum=p.momentum,
                                    weight_decay=p.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, p.milestone_epochs(), gamma=p.gamma)
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
            for start in range(0, n, p.batch_size):
                x, y = train_set.batch(order[start:start + p.batch_size])
                if self.augment.enabled:
                    x = self.augment(x, generator)
                partner, lam = None, 1.0
                if p.cutmix_prob > 0 and float(torch.rand((), generator=generator)) < p.cutmix_prob:
                    x, partner, lam = cutmix(x, y, generator)
                x = x.contiguous(memory_format=self.memory_format)
                logits = self._run(x).float()
                loss = F.cross_entropy(logits, y)
                if partner is not None:
                    loss = lam * loss + (1.0 - lam) * F.cross_entropy(logits, partner)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(dim=1) == y).sum()
            scheduler.step()
            if progress is not None:
                progress(EpochStats(epoch, loss_sum, correct, n))

    @torch.no_grad()
    def accuracy(self, store: RealImageStore, batch_size: int = 500) -> float:
        """Top-1 accuracy of the current network on every image of ``store`` (eval mode)."""
        self.model.eval()
        correct = 0
        with reuse_freed_memory(self.device.type == "cpu"):
            for start in range(0, len(store), batch_size):
                pos = torch.arange(start, min(start + batch_size, len(store)))
                x = store.images(pos, self.device).contiguous(memory_format=self.memory_format)
                pred = self._run(x).argmax(dim=1)
                correct += int((pred.cpu() == store.labels[pos]).sum())
        return correct / len(store)


def _evaluate(
    make_train_set: Callable[[int], object],
    train_size: int,
    test: RealImageStore,
    arch: str,
    protocol: EvalProtocol,
    runs: int,
    seed: int,
    validation: RealImageStore | None,
    device,
    precision: str,
    compile: bool,
    progress: bool,
    description: str,
) -> EvaluationResult:
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    trainer = NetworkTrainer(arch, test.num_classes, test.image_shape, protocol, device, precision, compile)
    seeds = [seed + r for r in range(runs)]
    accuracies, val_accuracies = [], []
    with tqdm(total=runs * protocol.epochs, desc=description, unit="epoch", disable=not progress,
              leave=False) as bar:
        for run_seed in seeds:
            trainer.train(make_train_set(run_seed), run_seed, progress=lambda stats: bar.update())
            accuracies.append(trainer.accuracy(test))
            if validation is not None:
                val_accuracies.append(trainer.accuracy(validation))
            bar.set_postfix(acc=f"{100 * accuracies[-1]:.1f}")
    return EvaluationResult(arch, protocol.name, protocol.epochs, accuracies, seeds, train_size,
                            val_accuracies or None, asdict(protocol), trainer.precision)


def evaluate_synthetic(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_data: RealImageStore,
    arch: str = "convnet3",
    protocol: str | EvalProtocol = "dsa",
    runs: int = 5,
    seed: int = 0,
    *,
    epochs: int | None = None,
    augmentation: str | None = None,
    validation: RealImageStore | None = None,
    device=None,
    precision: str = "auto",
    compile: bool = True,
    progress: bool = True,
) -> EvaluationResult:
    """Train ``runs`` fresh ``arch`` networks on (images, labels) and report last-epoch test accuracy.

    ``images`` are normalized like ``test_data``. ``epochs``/``augmentation`` override the protocol preset.
    """
    if images.shape[1:] != torch.Size(test_data.image_shape):
        raise ValueError(f"images are {tuple(images.shape[1:])} but test images are {test_data.image_shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    protocol = get_protocol(protocol, epochs=epochs, augmentation=augmentation)
    train_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_set = _TensorSet(images, labels, train_device)
    return _evaluate(lambda _seed: train_set, len(train_set), test_data, arch, protocol, runs, seed, validation,
                     train_device, precision, compile, progress, f"eval {arch}")


def _evaluate_baseline(data: ImageClassificationData, make_train_set, train_size: int, arch: str,
                       protocol: str | EvalProtocol, runs: int, seed: int, epochs: int | None,
                       augmentation: str | None, device, precision: str, compile: bool, progress: bool,
                       description: str) -> EvaluationResult:
    protocol = get_protocol(protocol, epochs=epochs, augmentation=augmentation)
    return _evaluate(make_train_set, train_size, data.test, arch, protocol, runs, seed, data.validation, device,
                     precision, compile, progress, description)


def evaluate_random_subset(
    data: ImageClassificationData,
    ipc: int,
    arch: str = "convnet3",
    protocol: str | EvalProtocol = "dsa",
    runs: int = 5,
    seed: int = 0,
    *,
    epochs: int | None = None,
    augmentation: str | None = None,
    device=None,
    precision: str = "auto",
    compile: bool = True,
    progress: bool = True,
) -> EvaluationResult:
    """Baseline: a fresh random class-balanced subset of ``ipc`` real images per class for each run."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def subset(run_seed: int) -> _TensorSet:
        positions = data.train.balanced_subset(ipc, torch.Generator().manual_seed(run_seed))
        return _TensorSet(data.train.images(positions), data.train.labels[positions], device)

    return _evaluate_baseline(data, subset, ipc * data.num_classes, arch, protocol, runs, seed, epochs,
                              augmentation, device, precision, compile, progress, f"random ipc{ipc} {arch}")


def evaluate_whole_dataset(
    data: ImageClassificationData,
    arch: str = "convnet3",
    protocol: str | EvalProtocol = "dsa",
    runs: int = 1,
    seed: int = 0,
    *,
    epochs: int | None = None,
    augmentation: str | None = None,
    device=None,
    precision: str = "auto",
    compile: bool = True,
    progress: bool = True,
) -> EvaluationResult:
    """Baseline: train on the whole training split with the same protocol (lower ``epochs`` for big sets)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_set = _StoreSet(data.train, None, device)
    return _evaluate_baseline(data, lambda _seed: train_set, len(train_set), arch, protocol, runs, seed, epochs,
                              augmentation, device, precision, compile, progress, f"whole set {arch}")


def evaluate_architectures(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_data: RealImageStore,
    archs: Sequence[str],
    **kwargs,
) -> dict[str, EvaluationResult]:
    """Cross-architecture evaluation: :func:`evaluate_synthetic` for each architecture in ``archs``."""
    return {arch: evaluate_synthetic(images, labels, test_data, arch=arch, **kwargs) for arch in archs}
