"""Checks and helpers shared by the base methods (the method contract itself is :mod:`cmidd_hf.engine.method`)."""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch

from .. import models  # noqa: F401  (registers convnet3, resnet18_cifar, ... with timm)
from ..data.augment import default_augmentation, parse_strategy
from ..data.loading import RealImageStore
from ..engine.method import MethodConfigError


def check_architecture(field_name: str, arch: str) -> None:
    """Refuse an architecture timm does not know (cmidd_hf's are registered on import)."""
    if not timm.is_model(arch):
        raise MethodConfigError(f"{field_name}: unknown architecture {arch!r}; use a name registered by cmidd_hf "
                                "(convnet3, resnet18_cifar, ...) or any timm model")


def check_strategy(field_name: str, strategy: str) -> None:
    """Refuse a DSA strategy with unknown ops ('auto' and 'none' are always valid)."""
    if strategy not in ("auto", "none"):
        try:
            parse_strategy(strategy)
        except ValueError as err:
            raise MethodConfigError(f"{field_name}: {err}") from err


def check_per_class_counts(real: RealImageStore, **counts: int) -> None:
    """Refuse per-class image counts (e.g. ``batch_real=256``) above the smallest class of ``real``."""
    smallest = min(real.class_count(c) for c in range(real.num_classes))
    for name, value in counts.items():
        if value > smallest:
            raise MethodConfigError(f"{name}={value} exceeds the {smallest} training images of the smallest "
                                    f"class; choose {name} <= {smallest}")


def check_net_sgd(lr_net: float, momentum_net: float, weight_decay_net: float) -> None:
    """Refuse network-SGD settings that cannot train (IDC, IDM)."""
    if lr_net <= 0 or weight_decay_net < 0 or not 0 <= momentum_net < 1:
        raise MethodConfigError(f"lr_net={lr_net}, momentum_net={momentum_net}, weight_decay_net={weight_decay_net}: "
                                "need lr_net > 0, 0 <= momentum_net < 1, weight_decay_net >= 0")


def check_mix_init(init: str, factor: int) -> None:
    """``init=mix`` tiles factor² real images per stored image, so it needs factor >= 2."""
    if init == "mix" and factor == 1:
        raise MethodConfigError("init=mix needs factor >= 2 (with factor 1 use init=real)")


def mix_image_counts(init: str, ipc: int, factor: int) -> dict[str, int]:
    """Real images per class that ``init=mix`` draws, for :func:`check_per_class_counts`."""
    return {"ipc*factor^2": ipc * factor ** 2} if init == "mix" else {}


def resettable_modules(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The sub-modules of ``net`` that can re-draw their parameters (``reset_parameters``)."""
    return [m for m in net.modules() if m is not net and hasattr(m, "reset_parameters")]


def reset_in_place(modules: Sequence[torch.nn.Module], seed: int) -> None:
    """Re-draw the parameters of ``modules`` in place from ``seed`` (global RNG untouched): a fresh random
    network per iteration without building (or recompiling) a new one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in modules:
            module.reset_parameters()


def resolve_strategy(strategy: str, dataset_name: str) -> str | None:
    """'auto' -> the dataset's DSA default (no flip for digits), 'none' -> None, else the strategy itself."""
    if strategy == "auto":
        return default_augmentation(dataset_name)
    return None if strategy == "none" else strategy
