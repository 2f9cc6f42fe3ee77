"""Arguments of the distillation recipes (``recipes/distill_dm.py``) and their up-front validation."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import timm

from .config import ConfigError
from .evaluation import PROTOCOLS
from .precision import PRECISIONS


@dataclass
class DistillArguments:
    """Everything a DM(+CMI) run needs. Any field can be set in the YAML config or on the command line."""

    # data
    dataset: str = field(default="mnist-5k", metadata={"help": "embedded name (mnist-5k), Hub dataset id or "
                                                             "Hub-layout folder"})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. cropped_digits"})
    image_column: str | None = field(default=None, metadata={"help": "image column (default: found by type)"})
    label_column: str | None = field(default=None, metadata={"help": "label column (default: found by type)"})
    train_split: str = "train"
    test_split: str = "test"
    # synthetic set
    ipc: int = field(default=10, metadata={"help": "synthetic images per class"})
    init: str = field(default="real", metadata={"help": "initialization", "choices": ["real", "noise"]})
    # DM
    method: str = field(default="dm", metadata={"help": "base method", "choices": ["dm"]})
    iterations: int = 1000
    lr_img: float = 1.0
    momentum_img: float = 0.5
    batch_real: int = field(default=256, metadata={"help": "real images per class per step"})
    net_arch: str = field(default="convnet3", metadata={"help": "random network of DM (convnet3_bn: BN variant)"})
    dsa_strategy: str = field(default="auto", metadata={"help": "DSA ops joined by _, 'none', or 'auto' (the "
                                                                "dataset's default: no flip for digits)"})
    # CMI
    cmi_weight: float = field(default=0.0, metadata={"help": "lambda of the CMI term (0 = base method only)"})
    cmi_space: str = field(default="feature", metadata={"choices": ["feature", "probability"]})
    cmi_normalization: str = field(default="global", metadata={"choices": ["global", "per_class"]})
    cmi_every: int = field(default=1, metadata={"help": "compute the CMI term every k steps"})
    cmi_class_chunk: int | None = field(default=None, metadata={"help": "classes per proxy forward (memory)"})
    cmi_precision: str = field(default="fp32", metadata={"help": "proxy forward precision (bf16: faster on "
                                                                 "CPUs/GPUs with native bf16; auto: bf16 there)",
                                                         "choices": list(PRECISIONS)})
    proxies: list[str] = field(default_factory=list, metadata={
        "help": "proxy networks: timm names, hf-hub:org/name, local-dir:/path, transformers:org/name; in YAML "
                "also {train: {arch, count, epochs, ...}} to train them once and cache"})
    proxy_cache_dir: str = field(default="outputs/proxy-cache")
    # evaluation
    eval_archs: list[str] = field(default_factory=lambda: ["convnet3"])
    eval_protocol: str = field(default="dsa", metadata={"choices": sorted(PROTOCOLS)})
    eval_runs: int = 5
    eval_epochs: int | None = field(default=None, metadata={"help": "override the protocol's epochs"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps during distillation (0: only at "
                                                         "the end)"})
    eval_every_runs: int = field(default=1, metadata={"help": "networks per periodic evaluation"})
    eval_at_start: bool = field(default=True, metadata={"help": "with eval_every, also evaluate the initial set"})
    eval_baseline: bool = field(default=False, metadata={"help": "also evaluate random real subsets of the same "
                                                                 "IPC (recorded as baselines in the card)"})
    # run
    seed: int = 0
    output_dir: str = "outputs"
    run_name: str | None = field(default=None, metadata={"help": "default: <dataset>-dm[-cmi]-ipc<k>"})
    checkpoint_every: int = 500
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    report_to: str = field(default="none", metadata={"choices": ["none", "tensorboard", "wandb", "all"]})
    precision: str = field(default="auto", metadata={"help": "DM real path and evaluation networks (auto: bf16 "
                                                             "where the device has native bf16, else fp32)",
                                                     "choices": list(PRECISIONS)})
    compile: bool = field(default=True, metadata={"help": "torch.compile the networks (off: no warm-up)"})
    cpu: bool = field(default=False, metadata={"help": "force CPU even when a GPU is present"})
    log_every: int = 1
    # sharing
    push_to_hub: str | None = field(default=None, metadata={"help": "push the distilled set to this Hub dataset "
                                                                    "repo (org/name) at the end"})
    hub_config: str = field(default="default", metadata={"help": "dataset config name of this set (e.g. ipc50 "
                                                                 "to add it next to an existing default config)"})
    hub_private: bool = field(default=False, metadata={"help": "create the Hub repo as private"})

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.resolved_run_name

    @property
    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        dataset = self.dataset.rstrip("/").split("/")[-1]
        return f"{dataset}-{self.method}{'-cmi' if self.cmi_weight > 0 else ''}-ipc{self.ipc}"


def validate(args: DistillArguments) -> None:
    """Checks that need no data: raise ConfigError naming the field and the fix."""
    positive = {"ipc": args.ipc, "batch_real": args.batch_real, "eval_runs": args.eval_runs,
                "cmi_every": args.cmi_every, "log_every": args.log_every, "eval_every_runs": args.eval_every_runs}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}={value}: must be >= 1")
    for name in ("iterations", "checkpoint_every", "eval_every"):
        if getattr(args, name) < 0:
            raise ConfigError(f"{name}={getattr(args, name)}: must be >= 0")
    if args.cmi_weight < 0:
        raise ConfigError(f"cmi_weight={args.cmi_weight}: the CMI weight (lambda) must be >= 0")
    if args.lr_img <= 0:
        raise ConfigError(f"lr_img={args.lr_img}: must be > 0")
    if args.eval_epochs is not None and args.eval_epochs < 1:
        raise ConfigError(f"eval_epochs={args.eval_epochs}: must be >= 1 (or unset for the protocol's)")
    if args.cmi_class_chunk is not None and args.cmi_class_chunk < 1:
        raise ConfigError(f"cmi_class_chunk={args.cmi_class_chunk}: must be >= 1 (or unset)")
    for name, arch in [("net_arch", args.net_arch), *(("eval_archs", a) for a in args.eval_archs)]:
        if not timm.is_model(arch):
            raise ConfigError(f"{name}: unknown architecture {arch!r}; use a name registered by cmidd_hf "
                              "(convnet3, resnet18_cifar, ...) or any timm model")
    if args.cmi_weight > 0 and not args.proxies:
        raise ConfigError("cmi_weight > 0 needs proxies: set proxies (timm/hf-hub:/local-dir: names or a train: "
                          "spec in the YAML config)")
    if args.dsa_strategy not in ("auto", "none"):
        from .augment import parse_strategy

        try:
            parse_strategy(args.dsa_strategy)
        except ValueError as err:
            raise ConfigError(f"dsa_strategy: {err}") from err
    if args.report_to in ("tensorboard", "wandb"):
        from accelerate.utils import is_tensorboard_available, is_wandb_available

        if not {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[args.report_to]():
            raise ConfigError(f"report_to={args.report_to}: the {args.report_to} package is not installed; "
                              f"pip install 'cmidd-hf[{args.report_to}]' or use report_to=none")
    if args.push_to_hub is not None:
        check_can_push(args.push_to_hub)
    from .hub import check_config_name

    try:
        check_config_name(args.hub_config, field="hub_config")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    check_writable(args.output_dir)


def check_can_push(repo_id: str) -> None:
    """Fail before distilling if the result could not be pushed: bad repo id, offline mode, or no token."""
    from huggingface_hub import constants, get_token

    from .hub import check_repo_id

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
    """Fail now, not after hours of distillation, if results cannot be written."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"output_dir={str(directory)!r} is not writable ({err.strerror}); choose another "
                          "output_dir") from err
