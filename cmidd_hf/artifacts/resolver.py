"""One resolver for every pretrained artifact a method reads — proxies, expert trajectories, teachers.

An artifact is a folder of safetensors/JSON files with a card. Its spec is

* ``local-dir:/path`` — a folder on disk;
* ``hf-hub:org/name[@revision]`` — a Hub model repo, fetched with ``snapshot_download`` (so the Hub cache works
  offline and the exact commit is recorded);
* a mapping ``{"train": {...}}`` — trained the first time and cached under ``cache_dir/<key>`` (the caller
  supplies the key and the training function: :func:`cached_or_built`).

:func:`resolve_artifact` returns the local folder and its provenance; :func:`push_artifact` uploads a folder's
files as a model repo. Every failure is an :class:`ArtifactError` naming the spec and the fix.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from filelock import FileLock


class ArtifactError(ValueError):
    """An artifact that cannot be found, downloaded, or read; the message names the spec and the fix."""


@dataclass(frozen=True)
class ResolvedArtifact:
    """A local folder holding an artifact, with where it came from (repo id + commit, or the path)."""

    spec: str
    folder: Path
    provenance: dict = field(default_factory=dict)


def parse_spec(field_name: str, value: object) -> object:
    """An artifact argument as given: a string holding a ``{train: {...}}`` YAML mapping (from the command line)
    becomes that mapping; a mapping must have the single key ``train``. Raises ArtifactError naming the field."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ArtifactError(f"{field_name}: not a valid YAML mapping ({err.__class__.__name__})") from None
    if isinstance(value, Mapping) and set(value) != {"train"}:
        raise ArtifactError(f"{field_name}: a mapping must be {{train: {{...}}}}, got keys {sorted(value)}")
    return value


def is_folder_spec(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(("local-dir:", "hf-hub:"))


def resolve_artifact(spec: str, required: Sequence[str], kind: str,
                     allow_patterns: Sequence[str] | None = None) -> ResolvedArtifact:
    """The folder of ``spec`` holding every file of ``required`` (``kind`` names the artifact in errors)."""
    if spec.startswith("local-dir:"):
        folder = Path(spec[len("local-dir:"):]).expanduser()
        if not folder.is_dir():
            raise ArtifactError(f"{kind} {spec!r}: no such folder; check the path")
        provenance = {"name": spec, "path": str(folder.resolve())}
    elif spec.startswith("hf-hub:"):
        from huggingface_hub import snapshot_download

        repo_id, _, revision = spec[len("hf-hub:"):].partition("@")
        try:
            folder = Path(snapshot_download(repo_id, revision=revision or None,
                                            allow_patterns=list(allow_patterns) if allow_patterns else None))
        except Exception as err:  # hub errors come in many types; name the spec once
            raise ArtifactError(f"{kind} {spec!r} could not be downloaded: {type(err).__name__}: {err}") from err
        provenance = {"name": spec, "repo_id": repo_id, "revision": folder.name}  # snapshots are named by commit
    else:
        raise ArtifactError(f"{kind} {spec!r}: use 'local-dir:/path' or 'hf-hub:org/name[@revision]'")
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise ArtifactError(f"{kind} {spec!r} is incomplete: {missing} missing in {folder}; "
                            "re-create or re-download it")
    return ResolvedArtifact(spec, folder, provenance)


def training_data_key(dataset_id: str, train_subset: str = "") -> str:
    """The part of a cache key naming what an artifact was trained on: the dataset id (``/`` → ``--``) and, for
    other training images than the whole ``train`` split (another configuration or split, held-out validation
    images), which ones, so runs on other images never share it; the whole split keeps the plain id."""
    key = dataset_id.replace("/", "--")
    return f"{key}-{train_subset}" if train_subset else key


def cached_or_built(cache_dir: str | os.PathLike, key: str, build: Callable[[Path], None],
                    complete: Callable[[Path], bool]) -> Path:
    """The folder ``cache_dir/key``, built by ``build(staging)`` and renamed into place unless ``complete``.

    Built under a file lock, so runs sharing a cache side by side build it once and the others then read it.
    """
    folder = Path(cache_dir) / key
    if complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / f".{folder.name}.lock"):
        if not complete(folder):
            write_atomically(folder, build)
    return folder


def write_atomically(folder: Path, build: Callable[[Path], None]) -> Path:
    """``build(staging)`` in a hidden sibling folder, then renamed onto ``folder`` (replacing it): readers never
    see a half-written folder, and a failed build leaves nothing behind."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def push_artifact(folder: str | os.PathLike, repo_id: str, patterns: Sequence[str], kind: str,
                  private: bool = False, token: str | None = None):
    """Upload the files of ``folder`` matching ``patterns`` as one commit to the model repo ``repo_id``.
    ``token``: None uses ``HF_TOKEN`` or the login token."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             allow_patterns=list(patterns), commit_message=f"Upload {kind} {Path(folder).name}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
