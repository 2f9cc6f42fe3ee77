"""The contract between the distillation engine and a base method (DM, DC, DSA, IDC, IDM; MTT, SRe2L next).

A method is one module under ``cmidd_hf/methods/`` with a config dataclass and a :class:`DistillationMethod`
subclass registered by name. The engine (:class:`cmidd_hf.engine.distill.Distiller`) only ever calls the hooks below:

* :meth:`~DistillationMethod.init_synthetic` — the parametrization to learn (pixels by default);
* :meth:`~DistillationMethod.make_optimizer` — the optimizer over the parametrization (and any learnable
  tensors the method owns), with an optional per-image-step scheduler;
* :meth:`~DistillationMethod.begin_iteration` — per-iteration work (a fresh random network, a pixel clamp);
* :meth:`~DistillationMethod.losses` — one image step's losses of some classes, as named tensors (summed into
  the loss, all logged);
* :meth:`~DistillationMethod.after_image_step` — work between image steps (the DC/DSA inner loop);
* :meth:`~DistillationMethod.regularizer_inputs` / :meth:`~DistillationMethod.regularizer_draw` — which
  decoded images the regularizer sees (all of a class's by default; IDC: at most 128) and the key of its
  random draws (the iteration by default; IDC: the image step);
* :meth:`~DistillationMethod.state_dict` / :meth:`~DistillationMethod.load_state_dict` — the method's own
  state, saved with every checkpoint so that resuming is bit-exact;
* :meth:`~DistillationMethod.evaluation_overrides` — protocol settings the method learned (MTT: the step
  size), used by every evaluation and recorded in the card so that a user of the set replays them;
* :meth:`~DistillationMethod.final_labels` — the labels the finished set is saved with ([N] or soft [N, C]);
* :meth:`~DistillationMethod.blocks` / :meth:`~DistillationMethod.init_block` — a partition of the set into
  blocks distilled one after another, each from its own initialization with its own optimizer, owned by one
  process and streamed to disk when done (:mod:`cmidd_hf.engine.blocks`; SRe2L). The default (None) is the
  whole set as one parametrization, its classes sharded as ``sharding`` says.

Before the method is built, :meth:`DistillationMethod.resolve_artifacts` resolves the pretrained artifacts it
reads (MTT's experts, SRe2L's teacher) through :mod:`cmidd_hf.artifacts.resolver`, and names the data transform
they were built in (ZCA), which the runner applies to every split.

``sharding`` says how work is spread over processes (:class:`Sharding`). Every random draw must derive
from ``(seed, tag, step, substep, class or work unit)`` so that a loss does not depend on which process
computes it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import torch

from ..data.loading import RealImageStore
from .blocks import Block
from .parametrization import Parametrization, PixelParametrization


class Sharding(str, Enum):
    """How a method's classes are spread over processes.

    * ``CLASS``: each process owns some classes and reads only their synthetic images; the set is gathered
      when the whole of it is needed (checkpoint, evaluation, end).
    * ``CLASS_GATHERED``: as CLASS, but the whole set is gathered after every image step because
      :meth:`DistillationMethod.after_image_step` reads all of it (DC/DSA train a network on it).
    * ``REPLICATED``: the loss couples classes; every process computes everything (identically).
    * ``DATA``: the loss is a sum over ``work_units`` independent terms (MTT: trajectories), each of the whole
      set; processes split the units (and the regularizer, one more unit), and the gradient of every unit is
      shared so that each process sums them in unit order: the same update, bit for bit, as one process.
    """

    CLASS = "class"
    CLASS_GATHERED = "class_gathered"
    REPLICATED = "replicated"
    DATA = "data"


class MethodConfigError(ValueError):
    """A method setting that cannot work; the message names the field and the fix."""


@dataclass
class MethodConfig:
    """Settings every method has: the image optimizer and the initialization."""

    _argument_group_name: ClassVar[str] = "method"

    lr_img: float = field(default=1.0, metadata={"help": "learning rate of the synthetic images"})
    momentum_img: float = field(default=0.5, metadata={"help": "SGD momentum of the synthetic images"})
    init: str = field(default="real", metadata={"help": "initialization", "choices": ["real", "noise"]})

    def validate(self) -> None:
        """Raise MethodConfigError naming the field and the fix (no data needed)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise MethodConfigError(f"{f.name}={value}: must be a finite number")
        if self.lr_img <= 0:
            raise MethodConfigError(f"lr_img={self.lr_img}: must be > 0")
        if not 0 <= self.momentum_img < 1:
            raise MethodConfigError(f"momentum_img={self.momentum_img}: must be in [0, 1)")

    def identity(self) -> dict:
        """Settings a checkpoint must share with the run resuming it."""
        return {"init": self.init}

    def decoded_per_class(self, ipc: int) -> int:
        """Images of each class in the decoded set (what evaluation and the CMI see) for ``ipc`` stored ones."""
        return ipc

    def augmentation(self, dataset_name: str) -> str | None:
        """The DSA strategy the method applies on ``dataset_name`` (None: no augmentation)."""
        return None


@dataclass
class MethodContext:
    """What a method is built with besides its config."""

    real: RealImageStore
    ipc: int
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "auto"
    compile: bool = False
    augmentation: str | None = None  # the resolved DSA strategy of the dataset (None: no augmentation)
    dataset: str = ""  # the dataset's name or Hub id (dataset-dependent official settings, e.g. IDC's lr_img)
    artifacts: dict[str, Any] = field(default_factory=dict)  # what resolve_artifacts returned, by name
    iterations: int = 0  # the run's iterations (of every block, for methods with blocks): schedules' length


@dataclass
class MethodArtifacts:
    """Pretrained artifacts a method reads, resolved before it is built.

    ``items`` reach the method as ``context.artifacts``; ``transform`` (e.g. the experts' ZCA whitening) is
    applied to every split of the data before the method sees it and saved with the distilled set;
    ``provenance`` is recorded in the card."""

    items: dict[str, Any] = field(default_factory=dict)
    transform: Any = None
    provenance: dict[str, Any] = field(default_factory=dict)


class DistillationMethod:
    """Base class of the base methods; see the module docstring for the hooks the engine calls."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    sharding: Sharding = Sharding.CLASS

    def __init__(self, config: MethodConfig, context: MethodContext) -> None:
        self.config, self.context = config, context
        self.seed, self.device = context.seed, torch.device(context.device)

    @classmethod
    def resolve_artifacts(cls, config: MethodConfig, data, progress: bool = True,
                          compile: bool = True) -> MethodArtifacts:
        """Resolve (download, or train once and cache) what the method reads besides the data; ``data`` is the
        plain dataset; what it trains uses ``torch.compile`` only if ``compile`` (the run's setting). Called once
        per process, the main process first; raises MethodConfigError or ArtifactError naming the setting and
        the fix."""
        return MethodArtifacts()

    @property
    def image_steps_per_iteration(self) -> int:
        """Image updates in one iteration (DC/DSA: ``outer_loop``)."""
        return 1

    @property
    def work_units(self) -> int:
        """Independent loss terms of one image step under ``Sharding.DATA`` (``losses`` gets their indices)."""
        return 1

    def blocks(self) -> list[Block] | None:
        """The blocks of the set, in order (None: the whole set is one parametrization)."""
        return None

    def init_block(self, block: Block) -> Parametrization:
        """The initial parametrization of ``block`` (its classes' images only); methods with blocks define it."""
        raise NotImplementedError(f"method {self.name!r} declares blocks but no init_block")

    def init_synthetic(self) -> Parametrization:
        """The initial parametrization of ``context.ipc`` images per class (identical on every process)."""
        init = PixelParametrization.from_real if self.config.init == "real" else PixelParametrization.from_noise
        return init(self.context.real, self.context.ipc, self.seed)

    def make_optimizer(
        self, synthetic: Parametrization
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        optimizer = torch.optim.SGD(synthetic.parameters(), lr=self.config.lr_img, momentum=self.config.momentum_img)
        return optimizer, None

    def begin_iteration(self, synthetic: Parametrization, step: int) -> None:
        """Called before the first image step of iteration ``step`` (not again when resuming inside it)."""

    def losses(self, synthetic: Parametrization, classes: Sequence[int], step: int,
               substep: int) -> dict[str, torch.Tensor]:
        """The named loss terms of ``classes`` (under ``Sharding.DATA``: of work units) at image step
        ``substep`` of iteration ``step``."""
        raise NotImplementedError

    def after_image_step(self, synthetic: Parametrization, step: int, substep: int) -> None:
        """Called after every image step (with the whole set gathered under CLASS_GATHERED sharding)."""

    def regularizer_inputs(self, synthetic: Parametrization, classes: Sequence[int], step: int,
                           substep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The un-augmented images (and labels) of ``classes`` the regularizer sees: all decoded ones."""
        return synthetic.decode(classes)

    def regularizer_draw(self, step: int, substep: int) -> tuple[int, ...]:
        """The key of the regularizer's random draws (e.g. its proxy) at an image step: the iteration."""
        return (step,)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} has no state but the checkpoint holds {sorted(state)}")

    def final_labels(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The labels the finished set is saved and evaluated with: class indices [N] as distilled (default),
        or soft labels [N, C] (SRe2L ``soft_labels: static``: the teacher's probabilities)."""
        return labels

    def evaluation_overrides(self) -> dict[str, Any]:
        """Evaluation-protocol fields the method sets from what it learned, e.g. ``{"lr": 0.012}`` (MTT)."""
        return {}

    def describe(self) -> dict:
        """The method's settings as recorded in the dataset card (with what the config left to defaults)."""
        return dataclasses.asdict(self.config)


METHODS: dict[str, type[DistillationMethod]] = {}


def register_method(cls: type[DistillationMethod]) -> type[DistillationMethod]:
    """Class decorator: make ``cls`` available as ``get_method(cls.name)``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[DistillationMethod]:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]
