"""The method-agnostic distillation engine: a synthetic set, an image optimizer, objective + regularizer.

One code path for 1 CPU, 1 GPU and many processes (Accelerate). Classes are sharded across processes: each
process computes the matching loss and the CMI share of its own classes, and every random draw derives from
(seed, step, class), so the synthetic set does not depend on the number of processes. Checkpoints go through
``Accelerator.save_state`` into a temporary folder that is renamed into place; SIGINT/SIGTERM checkpoint
before exiting; a non-finite loss stops the run, naming the step, with the last good checkpoint kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from tqdm.auto import tqdm

from .cmi import CMIRegularizer
from .cpu_memory import reuse_freed_memory
from .data import RealImageStore
from .methods.base import DistillationObjective
from .seeding import generator

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed with the current configuration."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf."""


class SyntheticImages(nn.Module):
    """The learnable synthetic images (normalized space) and their labels, ``ipc`` per class, class-sorted."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ipc: int, num_classes: int) -> None:
        super().__init__()
        if len(images) != ipc * num_classes:
            raise ValueError(f"{len(images)} images for ipc={ipc} x {num_classes} classes")
        self.images = nn.Parameter(images.clone().float())
        self.register_buffer("labels", labels.clone().long())
        self.ipc, self.num_classes = ipc, num_classes

    @classmethod
    def from_real(cls, store: RealImageStore, ipc: int, seed: int) -> SyntheticImages:
        """Random distinct real images of every class (the official ``--init real``)."""
        images = torch.cat([store.sample(c, ipc, generator(seed, "init", c)) for c in range(store.num_classes)])
        return cls(images, _class_sorted_labels(store.num_classes, ipc), ipc, store.num_classes)

    @classmethod
    def from_noise(cls, store: RealImageStore, ipc: int, seed: int) -> SyntheticImages:
        """Standard-normal images (in normalized space)."""
        shape = (store.num_classes * ipc, *store.image_shape)
        images = torch.randn(shape, generator=generator(seed, "init-noise"))
        return cls(images, _class_sorted_labels(store.num_classes, ipc), ipc, store.num_classes)

    def rows_of(self, classes: Sequence[int]) -> torch.Tensor:
        return torch.cat([torch.arange(c * self.ipc, (c + 1) * self.ipc) for c in classes]) if classes else \
            torch.zeros(0, dtype=torch.long)


def _class_sorted_labels(num_classes: int, ipc: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(ipc)


@dataclass
class RunState:
    """Counters saved with every checkpoint (registered with Accelerate)."""

    step: int = 0
    elapsed_seconds: float = 0.0
    fingerprint: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"step": self.step, "elapsed_seconds": self.elapsed_seconds, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.elapsed_seconds = int(state["step"]), float(state["elapsed_seconds"])
        self.fingerprint = dict(state["fingerprint"])


def find_checkpoint(output_dir: str | os.PathLike, which: str) -> Path:
    """``which`` = "latest" (newest ``checkpoints/step_N`` of ``output_dir``) or a checkpoint path."""
    if which != "latest":
        path = Path(which)
        if not (path / "distill_state.json").exists():
            raise ResumeError(f"resume_from_checkpoint={which!r} is not a checkpoint folder (no distill_state.json)")
        return path
    root = Path(output_dir) / "checkpoints"
    steps = sorted((int(m.group(1)), p) for p in root.glob("step_*") if (m := CHECKPOINT_PATTERN.match(p.name))
                   and (p / "distill_state.json").exists()) if root.exists() else []
    if not steps:
        raise ResumeError(f"resume_from_checkpoint=latest but {root} holds no checkpoint")
    return steps[-1][1]


def check_compatible(saved: dict, current: dict) -> None:
    """Refuse to resume when the dataset, IPC, image size, method (or other identity keys) changed."""
    changed = {k: (saved.get(k), current.get(k)) for k in current if saved.get(k) != current.get(k)}
    if changed:
        details = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in changed.items())
        raise ResumeError(f"cannot resume: the checkpoint was made with a different configuration ({details}). "
                          "Use the original settings or start a new run (another output_dir).")


class Distiller:
    """Runs ``iterations`` image-update steps of ``objective + regularizer`` on a synthetic set.

    Args:
        accelerator: the run's Accelerator (its processes share the classes).
        synthetic: the initial synthetic set (identical on every process).
        objective: the base method's matching loss.
        regularizer: the CMI term, or None for the base method alone.
        lr, momentum: SGD on the synthetic images.
        fingerprint: identity of the run (dataset, ipc, image size, method, ...), checked on resume.
        evaluate: called on the main process with (images, labels, step) every ``eval_every`` steps (and at
            step 0 if ``evaluate_at_start``); returns a dict of plain values to log.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        synthetic: SyntheticImages,
        objective: DistillationObjective,
        regularizer: CMIRegularizer | None,
        iterations: int,
        lr: float,
        momentum: float,
        output_dir: str | os.PathLike,
        fingerprint: dict,
        checkpoint_every: int = 0,
        keep_checkpoints: int = 2,
        eval_every: int = 0,
        evaluate: Callable[[torch.Tensor, torch.Tensor, int], dict] | None = None,
        log_every: int = 1,
        progress: bool = True,
        evaluate_at_start: bool = True,
    ) -> None:
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        self.accelerator = accelerator
        self.synthetic = synthetic.to(accelerator.device)
        self.objective, self.regularizer = objective, regularizer
        self.iterations = iterations
        self.optimizer = torch.optim.SGD([self.synthetic.images], lr=lr, momentum=momentum)
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.eval_every, self.evaluate, self.log_every = eval_every, evaluate, log_every
        self.progress = progress
        self.evaluate_at_start = evaluate_at_start
        self.state = RunState(fingerprint=dict(fingerprint))
        self.metrics_path = self.output_dir / "metrics.jsonl"
        num_classes = synthetic.num_classes
        if objective.couples_classes:
            self.my_classes = list(range(num_classes))
        else:
            with accelerator.split_between_processes(list(range(num_classes))) as mine:
                self.my_classes = list(mine)
        self.my_rows = synthetic.rows_of(self.my_classes).to(accelerator.device)
        self._owned = torch.zeros(len(synthetic.labels), 1, 1, 1, device=accelerator.device)
        self._owned[self.my_rows] = 1.0
        accelerator.register_for_checkpointing(self.synthetic, self.optimizer, self.state)
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ process synchronisation

    def _sharded(self) -> bool:
        return self.accelerator.num_processes > 1 and not self.objective.couples_classes

    def synchronize(self) -> None:
        """Make the whole synthetic set (and its momentum) identical on every process: each class from its owner."""
        if not self._sharded():
            return
        tensors = [self.synthetic.images.data]
        buffer = self.optimizer.state.get(self.synthetic.images, {}).get("momentum_buffer")
        if buffer is not None:
            tensors.append(buffer)
        for tensor in tensors:
            tensor.copy_(self.accelerator.reduce(tensor * self._owned, reduction="sum"))

    def _reduce_scalars(self, values: list[float]) -> list[float]:
        if self.accelerator.num_processes == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Accelerate state of the full synthetic set, optimizer, RNG and counters; written atomically."""
        self.synchronize()
        final = self.checkpoint_dir / f"step_{self.state.step:06d}"
        staging = self.checkpoint_dir / f".staging_step_{self.state.step:06d}"
        acc = self.accelerator
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(staging), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (staging / "distill_state.json").write_text(json.dumps(self.state.state_dict(), indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            self._prune_checkpoints()
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        if self.keep_checkpoints <= 0:
            return
        steps = sorted((int(m.group(1)), p) for p in self.checkpoint_dir.glob("step_*")
                       if (m := CHECKPOINT_PATTERN.match(p.name)))
        for _, path in steps[:-self.keep_checkpoints]:
            shutil.rmtree(path, ignore_errors=True)

    def load_checkpoint(self, which: str) -> Path:
        path = find_checkpoint(self.output_dir, which)
        saved = json.loads((path / "distill_state.json").read_text())
        check_compatible(saved["fingerprint"], self.state.fingerprint)
        current_fingerprint = self.state.fingerprint
        self.accelerator.load_state(str(path))
        self.state.fingerprint = current_fingerprint
        if self.accelerator.is_main_process and self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line and json.loads(line).get("step", 0) <= self.state.step]
            self._write_text_atomic(self.metrics_path, "".join(f"{line}\n" for line in kept))
        return path

    @staticmethod
    def _write_text_atomic(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ the loop

    def log_record(self, record: dict) -> None:
        """Append ``record`` to metrics.jsonl (main process) and send its numbers to the trackers."""
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        self.accelerator.log(numbers, step=record["step"])

    def _run_evaluation(self) -> None:
        self.synchronize()
        if self.accelerator.is_main_process and self.evaluate is not None:
            record = self.evaluate(self.synthetic.images.detach().cpu(), self.synthetic.labels.cpu(), self.state.step)
            self.log_record({"step": self.state.step, "event": "evaluation", **record})
        self.accelerator.wait_for_everyone()

    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signum

    def run(self, resume_from_checkpoint: str | None = None) -> SyntheticImages:
        """Distill until ``iterations`` steps are done; returns the full synthetic set (on every process)."""
        if resume_from_checkpoint:
            path = self.load_checkpoint(resume_from_checkpoint)
            logger.info("resumed from %s at step %d", path, self.state.step)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with reuse_freed_memory(self.accelerator.device.type == "cpu"):
                self._loop()
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
        self.synchronize()
        return self.synthetic

    def _loop(self) -> None:
        acc = self.accelerator
        syn = self.synthetic
        total = syn.labels.numel()
        last_good: Path | None = None
        bar = tqdm(total=self.iterations, initial=self.state.step, desc="distill", unit="it",
                   disable=not (self.progress and acc.is_main_process))
        if self.state.step == 0 and self.eval_every > 0 and self.evaluate_at_start:
            self._run_evaluation()
        started = time.perf_counter() - self.state.elapsed_seconds
        while self.state.step < self.iterations:
            step = self.state.step
            loss_dd = self.objective.loss(syn.images, syn.ipc, self.my_classes, step)
            loss = loss_dd
            cmi_value = 0.0
            reg_active = self.regularizer is not None and self.regularizer.is_active(step)
            if reg_active:
                rows = self.my_rows
                loss = loss + self.regularizer(syn.images[rows], syn.labels[rows], step, syn.num_classes,
                                               total_samples=total if self._sharded() else None)
                cmi_value = self.regularizer.last_cmi
            if self.objective.couples_classes and acc.num_processes > 1:
                divisor = acc.num_processes  # every process computed everything: count it once
            else:
                divisor = 1
            stop = 1.0 if self._stop_signal is not None else 0.0
            loss_dd_sum, cmi_sum, loss_sum, stop_sum = self._reduce_scalars(
                [float(loss_dd.detach()) / divisor, cmi_value / divisor, float(loss.detach()) / divisor, stop])
            if not math.isfinite(loss_sum):
                bar.close()
                where = f"; the last good checkpoint is {last_good}" if last_good else ""
                raise NonFiniteLossError(f"non-finite loss {loss_sum} at step {step} (matching {loss_dd_sum}, "
                                         f"CMI {cmi_sum}){where}. Lower lr_img or the CMI weight.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.state.step = step + 1
            self.state.elapsed_seconds = time.perf_counter() - started
            if step % self.log_every == 0 or self.state.step == self.iterations:
                record = {"step": self.state.step, "loss": loss_sum, "matching_loss": loss_dd_sum}
                if reg_active:
                    record["cmi"] = cmi_sum
                self.log_record(record)
            bar.set_postfix(loss=f"{loss_dd_sum:.4g}", **({"cmi": f"{cmi_sum:.4g}"} if reg_active else {}))
            bar.update(1)
            if stop_sum > 0:
                path = self.save_checkpoint()
                bar.close()
                acc.print(f"interrupted: checkpoint saved to {path}; resume with --resume_from_checkpoint latest")
                raise KeyboardInterrupt(f"stopped by signal at step {self.state.step}")
            if self.checkpoint_every and self.state.step % self.checkpoint_every == 0:
                last_good = self.save_checkpoint()
            if self.eval_every and self.state.step % self.eval_every == 0 and self.state.step < self.iterations:
                self._run_evaluation()
        bar.close()
