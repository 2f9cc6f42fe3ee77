"""A synthetic set distilled as *blocks*: disjoint groups of its images, each optimized from its own
initialization with its own optimizer and schedule, owned by one process, and written to disk as soon as it is
done, so that memory is bounded by the blocks in flight, not by the set (SRe2L at ImageNet scale: IPC 50 at
224² is ~30 GB of float pixels before Adam's two moments).

A method declares its blocks (:meth:`~cmidd_hf.engine.method.DistillationMethod.blocks`) and builds each one's
parametrization (``init_block``); everything else is the ordinary engine: :class:`BlockwiseDistiller` runs one
:class:`~cmidd_hf.engine.distill.Distiller` per block on a :class:`LocalProcess` (the process alone: no
collective calls, checkpoints in the block's folder), so hooks, regularizers, checkpoints, bit-exact resume
and non-finite-loss stops are the same as for whole-set methods. Processes take blocks round-robin; every
draw of a block derives from the block's index, so the set does not depend on the number of processes.

Layout of ``<run>/blocks/``: ``run.json`` (the run's fingerprint and blocks), ``block-00007/`` (the block in
flight: checkpoints, metrics) and ``block-00007.safetensors`` (a finished block: ``pixels`` uint8 [n, C, H, W]
in [0, 255] and ``labels`` [n]).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

BLOCKS_DIR = "blocks"


@dataclass(frozen=True)
class Block:
    """Images ``first .. first + per_class - 1`` of every class in ``classes`` (dataset class ids)."""

    index: int
    classes: tuple[int, ...]
    per_class: int
    first: int = 0

    @property
    def size(self) -> int:
        return len(self.classes) * self.per_class


def class_blocks(num_classes: int, ipc: int, classes_per_block: int, images_per_block: int) -> list[Block]:
    """The set cut into blocks of ``images_per_block`` images of each of ``classes_per_block`` classes, ordered
    by image position, then by class (SRe2L: one image of each of 100 classes per block)."""
    if not 1 <= classes_per_block or not 1 <= images_per_block:
        raise ValueError("classes_per_block and images_per_block must be >= 1")
    blocks = []
    for first in range(0, ipc, images_per_block):
        for start in range(0, num_classes, classes_per_block):
            classes = tuple(range(start, min(start + classes_per_block, num_classes)))
            blocks.append(Block(len(blocks), classes, min(images_per_block, ipc - first), first))
    return blocks


# ------------------------------------------------------------------------------------------ one process alone


class LocalProcess:
    """What :class:`~cmidd_hf.engine.distill.Distiller` needs of an ``Accelerator``, for one process working
    alone on a block: no collective calls, and no global random state to checkpoint."""

    num_processes, process_index, is_main_process = 1, 0, True

    def __init__(self, device: torch.device, verbose: bool) -> None:
        self.device, self.verbose = device, verbose

    def save_state(self, output_dir: str, safe_serialization: bool = True) -> None:
        """Nothing beyond the checkpointed objects the Distiller writes itself: a block keeps no global random
        state (every draw derives from the block's seed)."""

    def load_state(self, input_dir: str) -> None:
        """Nothing to restore beyond the Distiller's objects (see :meth:`save_state`)."""

    def wait_for_everyone(self) -> None:
        """Nothing to wait for: the block is this process's alone."""

    def print(self, *args, **kwargs) -> None:
        if self.verbose:
            print(*args, **kwargs)

    def log(self, values: dict, step: int | None = None) -> None:
        """Numbers go to the block's metrics.jsonl only (trackers follow the run, not its blocks)."""


# ------------------------------------------------------------------------------------------ shards


def to_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalized images -> pixels in [0, 255] (clipped and rounded), as an image file would hold them."""
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (images.detach().cpu().float() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)


def from_uint8(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (pixels.float() / 255 - m) / s


def shard_path(root: Path, block: Block) -> Path:
    return root / f"block-{block.index:05d}.safetensors"


def write_shard(path: Path, pixels: torch.Tensor, labels: torch.Tensor, record: dict | None = None) -> None:
    """Written to a temporary name and renamed, so a shard on disk is always complete; ``record`` (the block's
    last logged values) is kept in the file's metadata."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"pixels": pixels.contiguous(), "labels": labels.detach().cpu().long().contiguous()}, tmp,
              metadata={"record": json.dumps(record or {})})
    os.replace(tmp, path)


def shard_record(path: Path) -> dict:
    """The last logged values of a finished block (its losses after the last iteration)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return json.loads((f.metadata() or {}).get("record", "{}"))


def read_blocks(root: str | os.PathLike, blocks: Sequence[Block], mean: Sequence[float],
                std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The finished set from its shards, class-sorted (a class's images in block order): normalized images
    and labels."""
    images, labels = [], []
    for block in blocks:
        shard = load_file(shard_path(Path(root), block))
        images.append(shard["pixels"])
        labels.append(shard["labels"])
    pixels, labels_t = torch.cat(images), torch.cat(labels)
    order = torch.argsort(labels_t, stable=True)
    return from_uint8(pixels[order], mean, std), labels_t[order]


# ------------------------------------------------------------------------------------------ the run


class BlockwiseDistiller:
    """Distill a method's blocks: this process's share (round-robin), each to completion, then its shard.

    Args:
        accelerator: the run's Accelerator (processes, device, barriers).
        method: a method whose ``blocks()`` is not None.
        regularizer: applied within each block (e.g. the class-aware CMI of the block's images).
        iterations: iterations of every block.
        output_dir: the run folder; blocks live under ``<output_dir>/blocks``.
        fingerprint: identity of the run, checked on resume (with the blocks).
        mean, std: the normalization of the images (shards hold pixels).
    """

    def __init__(self, accelerator, method, regularizer, iterations: int, output_dir: str | os.PathLike,
                 fingerprint: dict, mean: Sequence[float], std: Sequence[float], checkpoint_every: int = 0,
                 keep_checkpoints: int = 2, log_every: int = 1, progress: bool = True) -> None:
        self.accelerator, self.method, self.regularizer = accelerator, method, regularizer
        self.iterations, self.root = iterations, Path(output_dir) / BLOCKS_DIR
        self.blocks: list[Block] = list(method.blocks())
        self.identity = {"fingerprint": dict(fingerprint), "blocks": [asdict(b) for b in self.blocks],
                         "iterations": iterations}
        self.mean, self.std = tuple(mean), tuple(std)
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.log_every, self.progress = log_every, progress

    def describe(self) -> dict:
        """What the dataset card records about how the set was built."""
        first = self.blocks[0] if self.blocks else None
        return {"type": "blocks", "blocks": len(self.blocks),
                "classes_per_block": len(first.classes) if first else 0,
                "images_per_block": first.per_class if first else 0, "storage": "uint8 pixels per block"}

    def log_record(self, record: dict) -> None:
        """Append ``record`` to the run's metrics.jsonl (main process) and send its numbers to the trackers."""
        acc = self.accelerator
        if acc.is_main_process:
            with open(self.root.parent / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        acc.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and k != "step"}, step=record["step"])

    @property
    def mine(self) -> list[Block]:
        acc = self.accelerator
        return self.blocks[acc.process_index::acc.num_processes]

    def check_resumable(self) -> None:
        """Refuse to resume blocks made with another configuration (or when there is nothing to resume)."""
        from .distill import ResumeError, check_compatible

        record = self.root / "run.json"
        if not record.exists():
            raise ResumeError(f"resume_from_checkpoint=latest but {self.root} holds no blocks of a run")
        saved = json.loads(record.read_text())
        check_compatible(saved["fingerprint"], self.identity["fingerprint"])
        if saved != json.loads(json.dumps(self.identity)):
            raise ResumeError("cannot resume: the blocks or iterations per block changed since the run started; "
                              "use the same settings or another output_dir")

    def run(self, resume: bool = False) -> None:
        """Distill every unfinished block of this process (memory: one block at a time); the set is then on
        disk, block by block (:meth:`load` reads it back)."""
        from .distill import Distiller, checkpoints

        acc = self.accelerator
        if resume:
            self.check_resumable()
        elif acc.is_main_process:
            shutil.rmtree(self.root, ignore_errors=True)
        if acc.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "run.json").write_text(json.dumps(self.identity, indent=1))
        acc.wait_for_everyone()
        for block in self.mine:
            shard = shard_path(self.root, block)
            if shard.exists():
                continue
            work = self.root / shard.name.removesuffix(".safetensors")
            synthetic = self.method.init_block(block)
            fingerprint = {**self.identity["fingerprint"], "block": block.index}
            distiller = Distiller(LocalProcess(acc.device, verbose=acc.is_main_process), self.method, synthetic,
                                  self.regularizer, self.iterations, work, fingerprint,
                                  checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints,
                                  log_every=self.log_every, progress=self.progress and acc.is_main_process,
                                  description=f"block {block.index + 1}/{len(self.blocks)}")
            started = bool(checkpoints(distiller.folder.checkpoints))
            distiller.run("latest" if started else None)
            images, labels = distiller.decoded()
            lines = distiller.folder.metrics.read_text().splitlines() if distiller.folder.metrics.exists() else []
            write_shard(shard, to_uint8(images, self.mean, self.std), labels, json.loads(lines[-1]) if lines else None)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(work)
        acc.wait_for_everyone()
        if acc.is_main_process:
            metrics = self.root.parent / "metrics.jsonl"
            metrics.unlink(missing_ok=True)
            for block in self.blocks:
                self.log_record({**shard_record(shard_path(self.root, block)), "event": "block", "block": block.index,
                                 "step": self.iterations})

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole finished set (normalized images, labels), class-sorted, from its shards."""
        return read_blocks(self.root, self.blocks, self.mean, self.std)
