"""Time the authors' MTT ``distill.py`` on this CPU, for the side-by-side with ``scripts/bench_mtt.py``.

Give it a checkout of GeorgeCazenavette/mtt-distillation; it works in a scratch folder outside it: CIFAR-10-shaped
random files in torchvision's layout (3,000 training images, the loop's cost does not depend on them), one
random expert trajectory in the official buffer format (``replay_buffer_0.pt``, ConvNet, 23 epochs), a stand-in
``wandb`` module that records when each iteration starts (``wandb.log({"Progress": it})``), and two CPU-only
patches in ``sitecustomize.py`` (the fake files pass torchvision's integrity check; ``Tensor.cuda`` — called once,
to save images — is a no-op). The official script then runs unchanged for ``--iterations`` + 1 iterations
with a one-epoch evaluation at iteration 0; iteration 0 is excluded, and the script prints the mean seconds of
the others and the process's peak resident memory. Nothing of the official code enters this repository.

    git clone https://github.com/GeorgeCazenavette/mtt-distillation /tmp/mtt-official
    python scripts/bench_mtt_official.py /tmp/mtt-official --ipc 10 --syn_steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

WANDB_STANDIN = '''"""Stand-in for wandb: records when each distillation iteration starts."""
import json, os, time, types
_marks = []
config = None
run = types.SimpleNamespace(name="timing")
class _Config:
    def __init__(self, args):
        self._items = dict(vars(args))
def init(config=None, **kwargs):
    globals()["config"] = _Config(config)
def log(values, step=None):
    if "Progress" in values:
        _marks.append(time.perf_counter())
def Histogram(values):
    return None
def Image(values):
    return None
def finish():
    _marks.append(time.perf_counter())
    json.dump(_marks, open(os.environ["TIMING_OUT"], "w"))
'''

CPU_PATCHES = '''import torch, torchvision.datasets, torchvision.datasets.cifar
torchvision.datasets.CIFAR10._check_integrity = lambda self: True
torchvision.datasets.cifar.check_integrity = lambda *args, **kwargs: True
torch.Tensor.cuda = lambda self, *args, **kwargs: self
'''

MAKE_BUFFER = '''import sys, torch
from utils import get_network
torch.manual_seed(0)
params = [p.detach().clone() for p in get_network("ConvNet", 3, 10, (32, 32)).parameters()]
trajectory = []
for epoch in range(int(sys.argv[1])):
    trajectory.append([p.clone() for p in params])
    params = [p + 0.01 * torch.randn_like(p) for p in params]
torch.save([trajectory], sys.argv[2])
'''


def write_fake_cifar10(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(1, 6):
        batch = {"data": rng.integers(0, 256, (600, 3072), dtype=np.uint8), "labels": [c % 10 for c in range(600)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {"data": rng.integers(0, 256, (1000, 3072), dtype=np.uint8), "labels": [c % 10 for c in range(1000)]}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(c) for c in range(10)]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("official", type=Path, help="a checkout of GeorgeCazenavette/mtt-distillation")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--syn_steps", type=int, default=30)
    parser.add_argument("--expert_epochs", type=int, default=2)
    parser.add_argument("--max_start_epoch", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations (after iteration 0)")
    args = parser.parse_args()
    if not (args.official / "distill.py").is_file():
        sys.exit(f"error: {args.official} has no distill.py; pass a checkout of GeorgeCazenavette/mtt-distillation")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for name in ("distill.py", "utils.py", "networks.py", "reparam_module.py"):
            shutil.copy(args.official / name, work / name)
        (work / "wandb").mkdir()
        (work / "wandb" / "__init__.py").write_text(WANDB_STANDIN)
        (work / "sitecustomize.py").write_text(CPU_PATCHES)
        write_fake_cifar10(work / "data" / "cifar-10-batches-py")
        buffers = work / "buffers" / "CIFAR10_NO_ZCA" / "ConvNet"
        buffers.mkdir(parents=True)
        env = {**os.environ, "PYTHONPATH": str(work), "TIMING_OUT": str(work / "timing.json")}
        subprocess.run([sys.executable, "-c", MAKE_BUFFER, str(args.max_start_epoch + args.expert_epochs + 1),
                        str(buffers / "replay_buffer_0.pt")], cwd=work, env=env, check=True)
        command = [sys.executable, "distill.py", "--dataset", "CIFAR10", "--ipc", str(args.ipc), "--syn_steps",
                   str(args.syn_steps), "--expert_epochs", str(args.expert_epochs), "--max_start_epoch",
                   str(args.max_start_epoch), "--data_path", "data", "--buffer_path", "buffers", "--Iteration",
                   str(args.iterations), "--num_eval", "1", "--epoch_eval_train", "1", "--eval_it", "100000"]
        run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"error: the official distill.py failed:\n{run.stderr[-2000:]}")
        marks = json.loads((work / "timing.json").read_text())
    seconds = [b - a for a, b in zip(marks[1:], marks[2:], strict=False)]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"official distill.py, CIFAR-10 shape, IPC {args.ipc}, syn_steps {args.syn_steps}, fp32, DSA: "
          f"{statistics.mean(seconds):.2f} s/it over {len(seconds)} iterations "
          f"({', '.join(f'{s:.1f}' for s in seconds)}), peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
