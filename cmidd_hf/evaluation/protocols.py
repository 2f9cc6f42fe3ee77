"""Evaluation protocols: how fresh networks are trained on a set (method-spec §5).

Protocols:

* ``dsa`` (DC/DSA/DM): SGD 0.01, momentum 0.9, wd 5e-4, batch 256, 1000 epochs, lr x0.1 at half,
  per-sample DSA (one group per batch), last-epoch test accuracy.
* ``dc``: the same for 300 epochs without augmentation.
* ``idc``: batch 64, MultiStep at 2/3 and 5/6 with gamma 0.2, IDC-style DSA without cutout plus CutMix p=0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..data.augment import DSA_STRATEGY


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
