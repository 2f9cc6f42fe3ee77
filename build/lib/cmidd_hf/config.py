"""Recipe arguments: dataclasses parsed by ``transformers.HfArgumentParser`` with a ``--config file.yaml``.

YAML values become defaults that command-line flags override; unknown YAML keys are rejected.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import yaml
from transformers import HfArgumentParser

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad recipe argument: the message names the field and the fix."""


def parse_args(argv: Sequence[str], dataclass_type: type[T], default_config: str | os.PathLike | None = None) -> T:
    """Parse ``argv`` into ``dataclass_type``; ``--config`` (else ``default_config``) supplies the defaults."""
    argv = list(argv)
    config_path = default_config
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        config_path = argv[i + 1]
        del argv[i:i + 2]
    parser = HfArgumentParser(dataclass_type)
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"--config {config_path}: no such file")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"--config {config_path}: expected a mapping of argument names to values")
        known = {f.name for f in dataclasses.fields(dataclass_type)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"--config {config_path}: unknown keys {unknown}; see --help for the valid names")
        parser.set_defaults(**values)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    args.config = str(config_path) if config_path is not None else None
    return args


def to_yaml(args) -> str:
    """The resolved arguments as YAML (plain types only)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
    return yaml.safe_dump(values, sort_keys=False)
