"""Recipe arguments: dataclasses parsed by ``transformers.HfArgumentParser`` with a ``--config file.yaml``.

YAML values become defaults that command-line flags override; unknown YAML keys are rejected.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..engine.errors import ConfigError


def parse_args(
    argv: Sequence[str],
    dataclass_types: Sequence[type],
    default_config: str | os.PathLike | None = None,
    defaults: dict | None = None,
) -> tuple[list, str | None]:
    """Parse ``argv`` into one instance of each of ``dataclass_types`` (each field name in one of them).

    ``--config`` (else ``default_config``) supplies defaults over ``defaults``; command-line flags override
    both. Returns the instances and the config path used. Unknown or malformed YAML is a ConfigError.
    """
    argv = list(argv)
    config_path = default_config
    while "--config" in argv:  # the last one wins, as for any flag
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        config_path = argv[i + 1]
        del argv[i:i + 2]
    values = dict(defaults or {})
    argv, cleared = _cleared_lists(argv, dataclass_types)
    parser = HfArgumentParser(list(dataclass_types))
    parser.add_argument("--config", default=None, help="YAML file of argument defaults (one key per argument); "
                        "command-line flags override it")
    if config_path is not None:
        values.update(read_config(config_path, dataclass_types))
    values.update(cleared)
    parser.set_defaults(**values)
    parsed = parser.parse_args_into_dataclasses(args=argv)
    return list(parsed[:len(dataclass_types)]), str(config_path) if config_path is not None else None


def _cleared_lists(argv: list[str], dataclass_types: Sequence[type]) -> tuple[list[str], dict]:
    """``--name []`` (or ``--name=[]``) for a list argument: the empty list, which argparse's ``nargs="+"`` cannot
    express (e.g. ``--eval_at []`` to drop a config's intermediate evaluations). Returns the remaining argv."""
    list_fields = {f.name for t in dataclass_types for f in dataclasses.fields(t)
                   if str(f.type).startswith(("list", "typing.List"))}
    rest, cleared = [], {}
    i = 0
    while i < len(argv):
        flag, _, inline = argv[i].partition("=")
        name = flag.removeprefix("--").replace("-", "_")
        value = inline or (argv[i + 1] if i + 1 < len(argv) else "")
        if flag.startswith("--") and name in list_fields and value == "[]":
            cleared[name] = []
            i += 1 if inline else 2
            continue
        rest.append(argv[i])
        i += 1
    return rest, cleared


def read_config(path: str | os.PathLike, dataclass_types: Sequence[type]) -> dict:
    """The YAML mapping of ``path``, every key a field of one of ``dataclass_types``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"--config {path}: not valid YAML{line}: {getattr(err, 'problem', err)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of argument names to values")
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown keys {unknown}; see --help for the valid names")
    return values


def to_yaml(values: dict) -> str:
    """Resolved arguments as YAML (plain types only)."""
    return yaml.safe_dump(values, sort_keys=False)
