"""The method-agnostic distillation engine: a parametrization, a base method, an optional regularizer.

One code path for 1 CPU, 1 GPU and many processes (Accelerate). How classes are spread over processes is the
method's declared :class:`~cmidd_hf.engine.method.Sharding`; every random draw derives from
(seed, tag, step, substep, class), so the synthetic set does not depend on the number of processes.

An *iteration* is ``method.image_steps_per_iteration`` image steps (1 for DM, ``outer_loop`` for DC/DSA,
``inner_loop`` for IDC), after the method's ``begin_iteration``. Each image step: the method's named losses of
the process's classes, plus the regularizer on the method's ``regularizer_inputs`` of those classes (by
default all their decoded, un-augmented images); one optimizer step; the gather the sharding asks for; the
method's ``after_image_step``. Checkpoints hold one safetensors file per checkpointed object (parametrization,
optimizer, counters, the method's own state, scheduler: nothing to unpickle on resume) beside
``Accelerator.save_state``'s RNG states, written into a temporary folder renamed into place, at iteration ends and — on
SIGINT/SIGTERM — between image steps, so an interrupted DC iteration resumes inside itself. A non-finite
loss stops the run, naming the step, with the last good checkpoint kept.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from tqdm.auto import tqdm

from .cpu_memory import reuse_freed_memory
from .errors import ConfigError
from .method import DistillationMethod, Sharding
from .parametrization import Parametrization
from .regularizer import Regularizer
from .run_folder import STATE_FILE, RunFolder
from .state_files import load_state_file, save_state_file

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)(?:_(\d+))?$")


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed with the current configuration."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf."""


@dataclass
class RunState:
    """Counters saved with every checkpoint.

    ``substep`` is the next image step inside iteration ``step``; ``sums`` accumulate the iteration's logged
    values over its image steps (their mean is logged when the iteration ends).
    """

    step: int = 0
    substep: int = 0
    elapsed_seconds: float = 0.0
    sums: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"step": self.step, "substep": self.substep, "elapsed_seconds": self.elapsed_seconds,
                "sums": dict(self.sums), "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.substep = int(state["step"]), int(state["substep"])
        self.elapsed_seconds = float(state["elapsed_seconds"])
        self.sums = {k: float(v) for k, v in state["sums"].items()}
        self.fingerprint = dict(state["fingerprint"])


def migrate_legacy_checkpoint(path: Path, names: Iterable[str]) -> None:
    """Rewrite a checkpoint from before the safetensors files (objects in Accelerate's
    ``custom_checkpoint_<i>.pkl``, in registration order; the committed partial runs) into today's layout. The
    pickles are read with the weights-only unpickler: tensors and plain containers only, no code runs."""
    for index, name in enumerate(names):
        legacy = path / f"custom_checkpoint_{index}.pkl"
        if legacy.exists():
            save_state_file(torch.load(legacy, map_location="cpu", weights_only=True), path / f"{name}.safetensors")
            legacy.unlink()


def load_checkpointed(path: Path, name: str) -> dict:
    if not (path / f"{name}.safetensors").exists():
        raise ResumeError(f"checkpoint {path} has no {name}.safetensors: it is incomplete; resume from another one")
    return load_state_file(path / f"{name}.safetensors")


def checkpoint_name(step: int, substep: int) -> str:
    return f"step_{step:06d}" if substep == 0 else f"step_{step:06d}_{substep:03d}"


def find_checkpoint(output_dir: str | os.PathLike, which: str) -> Path:
    """``which`` = "latest" (newest checkpoint of ``output_dir``) or a checkpoint path."""
    if which != "latest":
        path = Path(which)
        if not (path / STATE_FILE).exists():
            raise ResumeError(f"resume_from_checkpoint={which!r} is not a checkpoint folder (no {STATE_FILE})")
        return path
    root = RunFolder(output_dir).checkpoints
    found = [path for path in checkpoints(root) if (path / STATE_FILE).exists()]
    if not found:
        raise ResumeError(f"resume_from_checkpoint=latest but {root} holds no checkpoint")
    return found[-1]


def checkpoints(root: Path) -> list[Path]:
    """The checkpoint folders under ``root``, oldest first (by iteration, then image step)."""
    found = [((int(m.group(1)), int(m.group(2) or 0)), p) for p in root.glob("step_*")
             if (m := CHECKPOINT_PATTERN.match(p.name))] if root.exists() else []
    return [path for _, path in sorted(found)]


# Identity keys added after checkpoints were first written (2026-12-06: the weights of the CMI proxies and of the
# method's artifacts); a checkpoint without one predates it and is not checked on it.
LATER_IDENTITY_KEYS = frozenset({"proxies", "artifacts"})


def check_compatible(saved: dict, current: dict) -> None:
    """Refuse to resume when the dataset, IPC, image size, method (or other identity keys) changed."""
    changed = {k: (saved.get(k), current[k]) for k in current
               if saved.get(k) != current[k] and not (k in LATER_IDENTITY_KEYS and k not in saved)}
    if changed:
        details = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in changed.items())
        raise ResumeError(f"cannot resume: the checkpoint was made with a different configuration ({details}). "
                          "Use the original settings or start a new run (another output_dir).")


class Distiller:
    """Runs ``iterations`` iterations of ``method`` (+ ``regularizer``) on ``synthetic``.

    Args:
        accelerator: the run's Accelerator.
        method: the base method (its hooks are described in :mod:`cmidd_hf.engine.method`).
        synthetic: the initial parametrization (identical on every process).
        regularizer: e.g. :class:`cmidd_hf.cmi.class_aware.CMIRegularizer`, or None for the base method alone.
        fingerprint: identity of the run (dataset, ipc, image size, method, ...), checked on resume.
        evaluate: called on the main process with (images, labels, step) of the decoded set every
            ``eval_every`` iterations (and at 0 if ``evaluate_at_start``) and after each iteration listed in
            ``eval_at`` (0: the initial set); returns plain values to log.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        method: DistillationMethod,
        synthetic: Parametrization,
        regularizer: Regularizer | None,
        iterations: int,
        output_dir: str | os.PathLike,
        fingerprint: dict,
        checkpoint_every: int = 0,
        keep_checkpoints: int = 2,
        eval_every: int = 0,
        evaluate: Callable[[torch.Tensor, torch.Tensor, int], dict] | None = None,
        log_every: int = 1,
        progress: bool = True,
        evaluate_at_start: bool = True,
        eval_at: Iterable[int] = (),
        description: str | None = None,
    ) -> None:
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        self.accelerator, self.method, self.regularizer = accelerator, method, regularizer
        self.synthetic = synthetic.to(accelerator.device)
        self.iterations = iterations
        self.optimizer, self.scheduler = method.make_optimizer(self.synthetic)
        self.folder = RunFolder(output_dir)
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.eval_every, self.evaluate, self.log_every = eval_every, evaluate, log_every
        self.progress, self.evaluate_at_start = progress, evaluate_at_start
        self.eval_at = frozenset(eval_at)
        self.description = description or f"distill {method.name}"
        self.state = RunState(fingerprint=dict(fingerprint))
        num_classes, processes = synthetic.num_classes, accelerator.num_processes
        self.sharded = method.sharding in (Sharding.CLASS, Sharding.CLASS_GATHERED) and processes > 1
        self.work_split = (self.sharded or method.sharding == Sharding.DATA) and processes > 1
        if self.sharded and processes > num_classes:
            raise ConfigError(f"{processes} processes for {num_classes} classes: every process needs a class; "
                             f"launch at most {num_classes} processes")
        if self.sharded:
            with accelerator.split_between_processes(list(range(num_classes))) as mine:
                self.my_classes = list(mine)
        else:
            self.my_classes = list(range(num_classes))
        self._owned = torch.zeros(num_classes * synthetic.rows_per_class, dtype=torch.bool)
        self._owned[synthetic.rows_of(self.my_classes)] = True
        self._owned = self._owned.to(accelerator.device)
        self.checkpointed = {"synthetic": self.synthetic, "optimizer": self.optimizer, "run_state": self.state,
                             "method": method, **({"scheduler": self.scheduler} if self.scheduler is not None else {})}
        self._stop_signal: int | None = None
        self._evaluation_owed = False

    # ------------------------------------------------------------------ process synchronisation

    def synchronize(self) -> None:
        """Make the whole set identical on every process: each class's rows (and their optimizer state, e.g.
        momentum) from the process that owns the class. Exact: every other process contributes zeros."""
        if not self.sharded:
            return
        for parameter in self.synthetic.per_class_tensors():
            tensors = [parameter.data] + [t for t in self.optimizer.state.get(parameter, {}).values()
                                          if torch.is_tensor(t) and t.shape == parameter.shape]
            mask = self._owned.view(-1, *([1] * (parameter.dim() - 1)))
            for tensor in tensors:
                tensor.copy_(self.accelerator.reduce(torch.where(mask, tensor, torch.zeros_like(tensor)),
                                                     reduction="sum"))

    def _reduce(self, values: dict[str, float]) -> dict[str, float]:
        """Sum over processes (each computed its own classes or work units); replicated work counts once.

        Processes may log different names (a process whose units include the regularizer logs its terms, the
        others do not), so the names are gathered first and a name a process lacks counts as 0 there: an
        all-reduce of unequal lengths would hang."""
        if self.accelerator.num_processes == 1:
            return values
        keys = sorted(set().union(*gather_object([sorted(values)])))
        tensor = torch.tensor([values.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.accelerator.device)
        total = self.accelerator.reduce(tensor, reduction="sum")
        if not self.work_split:
            total = total / self.accelerator.num_processes
        return dict(zip(keys, total.tolist(), strict=True))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Accelerate state of the whole run, written to a staging folder and renamed into place."""
        self.synchronize()
        root = self.folder.checkpoints
        name = checkpoint_name(self.state.step, self.state.substep)
        final, staging = root / name, root / f".staging_{name}"
        acc = self.accelerator
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(staging), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            for name, obj in self.checkpointed.items():
                save_state_file(obj.state_dict(), staging / f"{name}.safetensors")
            (staging / STATE_FILE).write_text(json.dumps(self.state.state_dict(), indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            self._prune_checkpoints()
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        if self.keep_checkpoints <= 0:
            return
        for path in checkpoints(self.folder.checkpoints)[:-self.keep_checkpoints]:
            shutil.rmtree(path, ignore_errors=True)

    def load_checkpoint(self, which: str) -> Path:
        path = find_checkpoint(self.folder.root, which)
        saved = json.loads((path / STATE_FILE).read_text())
        check_compatible(saved["fingerprint"], self.state.fingerprint)
        current_fingerprint = self.state.fingerprint
        if self.accelerator.is_main_process:
            migrate_legacy_checkpoint(path, self.checkpointed)
        self.accelerator.wait_for_everyone()
        states = {name: load_checkpointed(path, name) for name in self.checkpointed}  # all present before any loads
        self.accelerator.load_state(str(path))
        for name, obj in self.checkpointed.items():
            obj.load_state_dict(states[name])
        self.state.fingerprint = current_fingerprint
        metrics = self.folder.metrics
        evaluated = [False]
        if self.accelerator.is_main_process and metrics.exists():  # forget what came after the checkpoint
            kept = [(line, record) for line in metrics.read_text().splitlines()
                    if line and (record := json.loads(line)).get("step", 0) <= self.state.step
                    and not record.get("final")]
            evaluated = [any(r.get("event") == "evaluation" and r["step"] == self.state.step for _, r in kept)]
            tmp = metrics.with_name(f".{metrics.name}.tmp")
            tmp.write_text("".join(f"{line}\n" for line, _ in kept))
            os.replace(tmp, metrics)
        if self.accelerator.num_processes > 1:
            broadcast_object_list(evaluated)
        # a run stopped during the evaluation that follows its checkpoint owes that evaluation
        self._evaluation_owed = (self.state.substep == 0 and self.state.step > 0 and not evaluated[0]
                                 and self._evaluates_after(self.state.step))
        return path

    # ------------------------------------------------------------------ the loop

    def log_record(self, record: dict) -> None:
        """Append ``record`` to metrics.jsonl (main process) and send its numbers to the trackers."""
        if self.accelerator.is_main_process:
            self.folder.root.mkdir(parents=True, exist_ok=True)
            with open(self.folder.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        self.accelerator.log(numbers, step=record["step"])

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole decoded set (gathered), detached, on the CPU."""
        self.synchronize()
        images, labels = self.synthetic.decode()
        return images.detach().cpu(), labels.detach().cpu()

    def _evaluates_after(self, step: int) -> bool:
        """Whether a periodic evaluation follows iteration ``step`` (0: the initial set). Never at
        ``step == iterations``: the final set is the runner's to evaluate, once."""
        if step >= self.iterations:
            return False
        periodic = bool(self.eval_every) and step % self.eval_every == 0 and (step > 0 or self.evaluate_at_start)
        return periodic or step in self.eval_at

    def _run_evaluation(self) -> None:
        images, labels = self.decoded()
        if self.accelerator.is_main_process and self.evaluate is not None:
            record = self.evaluate(images, labels, self.state.step)
            self.log_record({"step": self.state.step, "event": "evaluation", **record})
        self.accelerator.wait_for_everyone()

    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signum

    def run(self, resume_from_checkpoint: str | None = None) -> Parametrization:
        """Distill until ``iterations`` iterations are done; returns the whole parametrization (every process)."""
        if resume_from_checkpoint:
            path = self.load_checkpoint(resume_from_checkpoint)
            logger.info("resumed from %s at step %d (image step %d)", path, self.state.step, self.state.substep)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with reuse_freed_memory(self.accelerator.device.type == "cpu"):
                self._loop()
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
        self.synchronize()
        return self.synthetic

    def _unit_gradients(self, step: int, substep: int) -> tuple[dict[str, float], torch.Tensor]:
        """``Sharding.DATA``: the values and the gradient rows [units (+1 for the regularizer), all optimizer
        parameters] of this process's units (round-robin), each unit backpropagated alone; other rows zero."""
        units = self.method.work_units
        with_regularizer = self.regularizer is not None and self.regularizer.is_active(step)
        count = units + int(with_regularizer)
        processes, rank = self.accelerator.num_processes, self.accelerator.process_index
        parameters = self._optimized_parameters()
        rows = torch.zeros(count, sum(p.numel() for p in parameters), device=self.accelerator.device)
        values: dict[str, float] = {"loss": 0.0}
        for unit in range(rank, count, processes):
            if unit < units:
                terms = self.method.losses(self.synthetic, [unit], step, substep)
                loss = sum(terms.values())
                logs = {name: float(value.detach()) for name, value in terms.items()}
            else:
                classes = list(range(self.synthetic.num_classes))
                images, labels = self.method.regularizer_inputs(self.synthetic, classes, step, substep)
                draw = self.method.regularizer_draw(step, substep)
                loss, logs = self.regularizer(images, labels, step, self.synthetic.label_classes,
                                              total_samples=len(images), draw=draw)
            for name, value in logs.items():
                values[name] = values.get(name, 0.0) + value
            values["loss"] += float(loss.detach())
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            rows[unit] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                    for g, p in zip(grads, parameters, strict=True)])
        return values, rows

    def _optimized_parameters(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _apply_unit_gradients(self, rows: torch.Tensor) -> None:
        """Every unit's gradient on every process (each row has one contributor), summed in unit order: the
        same ``.grad`` bit for bit whatever the number of processes."""
        if self.accelerator.num_processes > 1:
            rows = self.accelerator.reduce(rows, reduction="sum")
        parameters = self._optimized_parameters()
        total = rows.sum(0).split([p.numel() for p in parameters])
        for parameter, grad in zip(parameters, total, strict=True):
            parameter.grad = grad.view_as(parameter).clone()

    def _image_step(self, step: int, substep: int) -> dict[str, float]:
        """One optimizer step on the process's classes; returns the step's values, summed over processes."""
        if self.method.sharding == Sharding.DATA:
            return self._data_parallel_step(step, substep)
        losses = self.method.losses(self.synthetic, self.my_classes, step, substep)
        loss = sum(losses.values())
        values = {name: float(value.detach()) for name, value in losses.items()}
        if self.regularizer is not None and self.regularizer.is_active(step):
            images, labels = self.method.regularizer_inputs(self.synthetic, self.my_classes, step, substep)
            total = self.synthetic.num_classes * (len(images) // len(self.my_classes))
            reg_loss, logs = self.regularizer(images, labels, step, self.synthetic.label_classes,
                                              total_samples=total, draw=self.method.regularizer_draw(step, substep))
            loss = loss + reg_loss
            values.update(logs)
        values["loss"] = float(loss.detach())
        values["stop"] = 1.0 if self._stop_signal is not None else 0.0
        values = self._reduce(values)
        self._check_finite(values, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._finish_step(step, substep)
        return values

    def _data_parallel_step(self, step: int, substep: int) -> dict[str, float]:
        values, rows = self._unit_gradients(step, substep)
        values["stop"] = 1.0 if self._stop_signal is not None else 0.0
        values = self._reduce(values)
        self._check_finite(values, step)
        self._apply_unit_gradients(rows)
        self._finish_step(step, substep)
        return values

    def _check_finite(self, values: dict[str, float], step: int) -> None:
        if not math.isfinite(values["loss"]):
            details = ", ".join(f"{k} {v}" for k, v in values.items() if k not in ("loss", "stop"))
            raise NonFiniteLossError(f"non-finite loss {values['loss']} at step {step} ({details})")

    def _finish_step(self, step: int, substep: int) -> None:
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.method.sharding == Sharding.CLASS_GATHERED:
            self.synchronize()
        self.method.after_image_step(self.synthetic, step, substep)

    def _stop(self, bar) -> None:
        path = self.save_checkpoint()
        bar.close()
        self.accelerator.print(f"interrupted: checkpoint saved to {path}; resume with --resume_from_checkpoint latest")
        raise KeyboardInterrupt(f"stopped by signal at step {self.state.step}, image step {self.state.substep}")

    def _loop(self) -> None:
        acc, state = self.accelerator, self.state
        steps_per_iteration = self.method.image_steps_per_iteration
        last_good: Path | None = None
        bar = tqdm(total=self.iterations, initial=state.step, desc=self.description, unit="it",
                   disable=not (self.progress and acc.is_main_process))
        if (state.step == 0 and state.substep == 0 and self._evaluates_after(0)) or self._evaluation_owed:
            self._run_evaluation()
        started = time.perf_counter() - state.elapsed_seconds
        while state.step < self.iterations:
            step = state.step
            iteration_started = time.perf_counter()
            if state.substep == 0:
                self.method.begin_iteration(self.synthetic, step)
            stop = False
            while state.substep < steps_per_iteration:
                try:
                    values = self._image_step(step, state.substep)
                except NonFiniteLossError as err:
                    bar.close()
                    where = f"; the last good checkpoint is {last_good}" if last_good else ""
                    raise NonFiniteLossError(f"{err}{where}. Lower lr_img or the regularizer weight.") from None
                stop = values.pop("stop") > 0
                for name, value in values.items():
                    state.sums[name] = state.sums.get(name, 0.0) + value
                state.substep += 1
                state.elapsed_seconds = time.perf_counter() - started
                if stop and state.substep < steps_per_iteration:
                    self._stop(bar)  # inside the iteration: the checkpoint holds the method's state
            state.step, state.substep = step + 1, 0
            means = {name: total / steps_per_iteration for name, total in state.sums.items()}
            state.sums = {}
            if step % self.log_every == 0 or state.step == self.iterations:
                self.log_record({"step": state.step, **means, "seconds": time.perf_counter() - iteration_started})
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if k != "loss"})
            bar.update(1)
            if stop:
                self._stop(bar)
            if self.checkpoint_every and state.step % self.checkpoint_every == 0:
                last_good = self.save_checkpoint()
            if self._evaluates_after(state.step):
                self._run_evaluation()
        bar.close()
