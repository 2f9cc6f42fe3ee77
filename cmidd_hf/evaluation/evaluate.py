"""Evaluate a set: train fresh networks on it (or on a random real subset, or the whole training set) under a
protocol and report their test accuracy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..data.loading import ImageClassificationData, RealImageStore
from .protocols import EvalProtocol, get_protocol
from .trainer import NetworkTrainer, StoreSet, TensorSet


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
    teacher: nn.Module | None = None,
) -> EvaluationResult:
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    trainer = NetworkTrainer(arch, test.num_classes, test.image_shape, protocol, device, precision, compile,
                             teacher=teacher)
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
    teacher: nn.Module | None = None,
) -> EvaluationResult:
    """Train ``runs`` fresh ``arch`` networks on (images, labels) and report last-epoch test accuracy.

    ``images`` are normalized like ``test_data``. ``epochs``/``augmentation`` override the protocol preset;
    ``teacher`` is the network a ``kd`` protocol distills from (its labels are then not used by the loss).
    """
    if images.shape[1:] != torch.Size(test_data.image_shape):
        raise ValueError(f"images are {tuple(images.shape[1:])} but test images are {test_data.image_shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    protocol = get_protocol(protocol, epochs=epochs, augmentation=augmentation)
    train_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_set = TensorSet(images, labels, train_device)
    return _evaluate(lambda _seed: train_set, len(train_set), test_data, arch, protocol, runs, seed, validation,
                     train_device, precision, compile, progress, f"eval {arch}", teacher)


def _evaluate_baseline(data: ImageClassificationData, make_train_set, train_size: int, arch: str,
                       protocol: str | EvalProtocol, runs: int, seed: int, epochs: int | None,
                       augmentation: str | None, device, precision: str, compile: bool, progress: bool,
                       description: str, teacher: nn.Module | None = None) -> EvaluationResult:
    protocol = get_protocol(protocol, epochs=epochs, augmentation=augmentation)
    return _evaluate(make_train_set, train_size, data.test, arch, protocol, runs, seed, data.validation, device,
                     precision, compile, progress, description, teacher)


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
    teacher: nn.Module | None = None,
) -> EvaluationResult:
    """Baseline: a fresh random class-balanced subset of ``ipc`` real images per class for each run."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def subset(run_seed: int) -> TensorSet:
        positions = data.train.balanced_subset(ipc, torch.Generator().manual_seed(run_seed))
        return TensorSet(data.train.images(positions), data.train.labels[positions], device)

    return _evaluate_baseline(data, subset, ipc * data.num_classes, arch, protocol, runs, seed, epochs,
                              augmentation, device, precision, compile, progress, f"random ipc{ipc} {arch}", teacher)


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
    teacher: nn.Module | None = None,
) -> EvaluationResult:
    """Baseline: train on the whole training split with the same protocol (lower ``epochs`` for big sets)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_set = StoreSet(data.train, None, device)
    return _evaluate_baseline(data, lambda _seed: train_set, len(train_set), arch, protocol, runs, seed, epochs,
                              augmentation, device, precision, compile, progress, f"whole set {arch}", teacher)


def evaluate_architectures(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_data: RealImageStore,
    archs: Sequence[str],
    **kwargs,
) -> dict[str, EvaluationResult]:
    """Cross-architecture evaluation: :func:`evaluate_synthetic` for each architecture in ``archs``."""
    return {arch: evaluate_synthetic(images, labels, test_data, arch=arch, **kwargs) for arch in archs}
