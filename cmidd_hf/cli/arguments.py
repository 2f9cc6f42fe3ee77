"""Arguments of the distillation recipes (``recipes/distill_<method>.py``), one dataclass per concern.

A recipe is the data, synthetic-set, method (the method's own config dataclass), CMI, evaluation, run and Hub
arguments. YAML configs stay flat (``ipc: 10``, ``lr_img: 1.0``, ...): each key goes to the dataclass that
owns it. Everything is validated before any data is read (:func:`validate`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..artifacts.resolver import ArtifactError, parse_spec
from ..engine.errors import ConfigError
from ..engine.precision import PRECISIONS
from ..evaluation.protocols import PROTOCOLS
from ..methods import METHODS, MethodConfig, MethodConfigError, get_method
from .config import parse_args


@dataclass
class DataArguments:
    _argument_group_name: ClassVar[str] = "data"

    dataset: str = field(default="mnist-5k", metadata={"help": "embedded name (mnist-5k), Hub dataset id or "
                                                             "Hub-layout folder"})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. cropped_digits"})
    image_column: str | None = field(default=None, metadata={"help": "image column (default: found by type)"})
    label_column: str | None = field(default=None, metadata={"help": "label column (default: found by type)"})
    train_split: str = "train"
    test_split: str = "test"
    validation_per_class: int = field(default=0, metadata={
        "help": "hold out this many training images per class (never distilled from) and report the final "
                "networks' accuracy on them: choose λ on these, never on the test split"})
    image_size: int | None = field(default=None, metadata={
        "help": "resize every image to this square size (cover, then center crop); needed for photos of varying "
                "size such as ImageNet's (224)"})
    in_memory: bool = field(default=True, metadata={
        "help": "decode every image into memory once (fast, small data); false: keep them in Arrow and decode "
                "each batch when read (ImageNet scale)"})
    num_workers: int = field(default=0, metadata={
        "help": "with in_memory false: DataLoader worker processes that decode the batches of evaluation and "
                "teacher/proxy training ahead of the step"})


def add_streaming_arguments(parser) -> None:
    """``--image_size`` / ``--in_memory`` / ``--num_workers`` (as in the recipes' data arguments) for the argparse
    scripts, so they read ImageNet-scale data the way the recipes do."""
    from transformers.hf_argparser import string_to_bool

    parser.add_argument("--image_size", type=int, default=None,
                        help=DataArguments.__dataclass_fields__["image_size"].metadata["help"])
    parser.add_argument("--in_memory", type=string_to_bool, default=True, metavar="{true,false}",
                        help=DataArguments.__dataclass_fields__["in_memory"].metadata["help"])
    parser.add_argument("--num_workers", type=int, default=0,
                        help=DataArguments.__dataclass_fields__["num_workers"].metadata["help"])


@dataclass
class SyntheticSetArguments:
    _argument_group_name: ClassVar[str] = "synthetic set"

    ipc: int = field(default=10, metadata={"help": "synthetic images per class"})


@dataclass
class CMIArguments:
    _argument_group_name: ClassVar[str] = "class-aware CMI regularizer"

    cmi_weight: float = field(default=0.0, metadata={"help": "lambda of the CMI term (0 = base method only)"})
    cmi_space: str = field(default="feature", metadata={"choices": ["feature", "probability"]})
    cmi_normalization: str = field(default="global", metadata={"choices": ["global", "per_class"]})
    cmi_every: int = field(default=1, metadata={"help": "compute the CMI term every k iterations"})
    cmi_class_chunk: int | None = field(default=None, metadata={"help": "classes per proxy forward (memory)"})
    cmi_precision: str = field(default="fp32", metadata={"help": "proxy forward precision (bf16: faster on "
                                                                 "CPUs/GPUs with native bf16; auto: bf16 there)",
                                                         "choices": list(PRECISIONS)})
    proxies: list[str] = field(default_factory=list, metadata={
        "help": "proxy networks: timm names, hf-hub:org/name, local-dir:/path, transformers:org/name, or "
                "{train: {arch, count, epochs, ...}} (YAML; a flow mapping on the command line) to train them once "
                "and cache"})
    proxy_cache_dir: str = field(default="outputs/proxy-cache")


@dataclass
class EvaluationArguments:
    _argument_group_name: ClassVar[str] = "evaluation"

    eval_archs: list[str] = field(default_factory=lambda: ["convnet3"])
    eval_protocol: str = field(default="dsa", metadata={"choices": sorted(PROTOCOLS)})
    eval_runs: int = field(default=5, metadata={"help": "networks trained at the end (split over processes)"})
    eval_epochs: int | None = field(default=None, metadata={"help": "override the protocol's epochs"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N iterations during distillation (0: "
                                                         "only at the end)"})
    eval_at: list[int] = field(default_factory=list, metadata={
        "help": "also evaluate after these iterations (0: the initial set), e.g. 100 200 for the accuracy after 1/10 "
                "and 1/5 of 1000 iterations without paying for an evaluation every 100"})
    eval_every_runs: int = field(default=1, metadata={"help": "networks per periodic evaluation"})
    eval_at_start: bool = field(default=True, metadata={"help": "with eval_every, also evaluate the initial set"})
    eval_teacher: str | None = field(default=None, metadata={
        "help": "teacher of a kd protocol (a timm name, hf-hub:, local-dir:, or {train: {...}} in YAML); default: "
                "the method's teacher (SRe2L)"})
    eval_baseline: bool = field(default=False, metadata={"help": "also evaluate random real subsets of the same "
                                                                 "IPC (recorded as baselines in the card)"})


@dataclass
class RunArguments:
    _argument_group_name: ClassVar[str] = "run"

    method: str = field(default="dm", metadata={"help": "base method (set by the entry script)",
                                                "choices": sorted(METHODS)})
    iterations: int = field(default=1000, metadata={"help": "iterations (DC/DSA: outer iterations)"})
    seed: int = 0
    output_dir: str = "outputs"
    run_name: str | None = field(default=None, metadata={"help": "default: <dataset>-<method>[-cmi]-ipc<k>"})
    checkpoint_every: int = 500
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept (0: all)"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    report_to: str = field(default="none", metadata={"choices": ["none", "tensorboard", "wandb", "all"]})
    precision: str = field(default="auto", metadata={"help": "method networks and evaluation (auto: bf16 where "
                                                             "the device has native bf16, else fp32)",
                                                     "choices": list(PRECISIONS)})
    compile: bool = field(default=True, metadata={"help": "torch.compile the networks (off: no warm-up)"})
    cpu: bool = field(default=False, metadata={"help": "force CPU even when a GPU is present"})
    threads_per_process: int | None = field(default=None, metadata={
        "help": "CPU threads of each process (default: the cores divided by the processes)"})
    log_every: int = 1


@dataclass
class HubArguments:
    _argument_group_name: ClassVar[str] = "sharing"

    push_to_hub: str | None = field(default=None, metadata={"help": "push the distilled set to this Hub dataset "
                                                                    "repo (org/name) at the end"})
    hub_config: str = field(default="default", metadata={"help": "dataset config name of this set (e.g. ipc50 "
                                                                 "to add it next to an existing default config)"})
    hub_private: bool = field(default=False, metadata={"help": "create the Hub repo as private"})


@dataclass
class DistillRecipe:
    """All arguments of one distillation run."""

    data: DataArguments
    synthetic: SyntheticSetArguments
    method: MethodConfig
    cmi: CMIArguments
    evaluation: EvaluationArguments
    run: RunArguments
    hub: HubArguments
    config: str | None = None  # the YAML file the defaults came from

    def groups(self) -> list:
        return [self.data, self.synthetic, self.method, self.cmi, self.evaluation, self.run, self.hub]

    def flat(self) -> dict:
        """Every argument by name (the YAML layout; written as the run's config.yaml)."""
        return {f.name: getattr(g, f.name) for g in self.groups() for f in dataclasses.fields(g)}

    @property
    def resolved_run_name(self) -> str:
        if self.run.run_name:
            return self.run.run_name
        dataset = self.data.dataset.rstrip("/").split("/")[-1]
        return f"{dataset}-{self.run.method}{'-cmi' if self.cmi.cmi_weight > 0 else ''}-ipc{self.synthetic.ipc}"

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.resolved_run_name


GROUPS = (DataArguments, SyntheticSetArguments, CMIArguments, EvaluationArguments, RunArguments, HubArguments)


def recipe_types(method: str) -> list[type]:
    """The dataclasses of a ``method`` recipe, in the order of :class:`DistillRecipe`."""
    data, synthetic, cmi, evaluation, run, hub = GROUPS
    return [data, synthetic, get_method(method).config_class, cmi, evaluation, run, hub]


def parse_recipe(argv: Sequence[str], method: str, default_config: str | os.PathLike | None = None) -> DistillRecipe:
    """Parse a ``method`` recipe's command line (``--config`` YAML defaults, flags override)."""
    parsed, config = parse_args(argv, recipe_types(method), default_config, defaults={"method": method})
    recipe = DistillRecipe(*parsed, config=config)
    if recipe.run.method != method:
        raise ConfigError(f"method={recipe.run.method!r} but this is the {method!r} recipe; run "
                          f"recipes/distill_{recipe.run.method}.py for that method")
    return recipe


def validate(recipe: DistillRecipe) -> None:
    """Checks that need no data: raise ConfigError naming the field and the fix."""
    for group in recipe.groups():
        for f in dataclasses.fields(group):
            value = getattr(group, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}={value}: must be a finite number")
    try:
        recipe.method.validate()
    except MethodConfigError as err:
        raise ConfigError(str(err)) from err
    data, cmi, ev, run = recipe.data, recipe.cmi, recipe.evaluation, recipe.run
    positive = {"ipc": recipe.synthetic.ipc, "eval_runs": ev.eval_runs, "cmi_every": cmi.cmi_every,
                "log_every": run.log_every, "eval_every_runs": ev.eval_every_runs}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}={value}: must be >= 1")
    for name, value in (("iterations", run.iterations), ("checkpoint_every", run.checkpoint_every),
                        ("validation_per_class", data.validation_per_class), ("num_workers", data.num_workers),
                        ("eval_every", ev.eval_every), ("keep_checkpoints", run.keep_checkpoints)):
        if value < 0:
            raise ConfigError(f"{name}={value}: must be >= 0")
    for step in ev.eval_at:
        if not 0 <= step < run.iterations:
            raise ConfigError(f"eval_at={step}: must be an iteration in 0..{run.iterations - 1} (the final set is "
                              f"always evaluated); drop it or raise iterations")
    if data.image_size is not None and data.image_size < 1:
        raise ConfigError(f"image_size={data.image_size}: must be >= 1 (or unset to keep the images' size)")
    if run.threads_per_process is not None and run.threads_per_process < 1:
        raise ConfigError(f"threads_per_process={run.threads_per_process}: must be >= 1 (or unset)")
    if cmi.cmi_weight < 0:
        raise ConfigError(f"cmi_weight={cmi.cmi_weight}: the CMI weight (lambda) must be >= 0")
    if ev.eval_epochs is not None and ev.eval_epochs < 1:
        raise ConfigError(f"eval_epochs={ev.eval_epochs}: must be >= 1 (or unset for the protocol's)")
    if cmi.cmi_class_chunk is not None and cmi.cmi_class_chunk < 1:
        raise ConfigError(f"cmi_class_chunk={cmi.cmi_class_chunk}: must be >= 1 (or unset)")
    import timm

    for arch in ev.eval_archs:
        if not timm.is_model(arch):
            raise ConfigError(f"eval_archs: unknown architecture {arch!r}; use a name registered by cmidd_hf "
                              "(convnet3, resnet18_cifar, ...) or any timm model")
    per_class = recipe.method.decoded_per_class(recipe.synthetic.ipc)
    if cmi.cmi_weight > 0 and per_class < 2:
        raise ConfigError(f"cmi_weight={cmi.cmi_weight} with {per_class} synthetic image per class: the "
                          "class-aware CMI of one image per class is exactly 0 (no class centre to pull toward), so "
                          "the term would cost time and change nothing; set cmi_weight 0, or ipc >= 2, or a "
                          "multi-formation method (idc, idm)")
    if cmi.cmi_weight > 0 and not cmi.proxies:
        raise ConfigError("cmi_weight > 0 needs proxies: set proxies (timm/hf-hub:/local-dir: names or a train: "
                          "spec)")
    try:  # --proxies '{train: {...}}' on the command line, as --experts / --teacher
        cmi.proxies = [parse_spec("proxies", spec) for spec in cmi.proxies]
    except ArtifactError as err:
        raise ConfigError(str(err)) from None
    if run.report_to in ("tensorboard", "wandb"):
        from accelerate.utils import is_tensorboard_available, is_wandb_available

        if not {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[run.report_to]():
            raise ConfigError(f"report_to={run.report_to}: the {run.report_to} package is not installed; "
                              f"pip install 'cmidd-hf[{run.report_to}]' or use report_to=none")
    if recipe.hub.push_to_hub is not None:
        check_can_push(recipe.hub.push_to_hub)
    from ..hub.synthetic_set import check_config_name

    try:
        check_config_name(recipe.hub.hub_config, field="hub_config")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if not data.dataset:
        raise ConfigError("dataset is empty; name an embedded dataset, a Hub id or a folder")
    check_writable(run.output_dir)


def check_can_push(repo_id: str) -> None:
    """Fail before distilling if the result could not be pushed: bad repo id, offline mode, or no token."""
    from huggingface_hub import constants, get_token

    from ..hub.synthetic_set import check_repo_id

    try:
        check_repo_id(repo_id, field="push_to_hub")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if constants.HF_HUB_OFFLINE:
        raise ConfigError("pushing to the Hub needs the network but HF_HUB_OFFLINE is set; unset it (a run's folder "
                          "can be pushed later with scripts/push_to_hub.py)")
    if get_token() is None:
        raise ConfigError("pushing to the Hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")


def check_writable(directory: str | os.PathLike) -> None:
    """Fail now, not after hours of distillation, if results cannot be written — without creating anything:
    the nearest existing folder on the path must be a writable folder."""
    path = Path(directory).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output_dir={str(directory)!r} is not writable ({existing} is a file); choose another "
                          "output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir={str(directory)!r} is not writable (no write permission on {existing}); "
                          "choose another output_dir")
