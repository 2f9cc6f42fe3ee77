"""Time the authors' DM loops on this CPU, beside ``scripts/bench_distill.py --method dm``.

DM: ``main_DM.py`` of VICO-UoE/DatasetCondensation (Zhao & Bilen's release); DM + CMI: ``DC-DSA-DM/main_DM.py``
of ndhg1213/CMIDD (the same loop plus the CMI term under a ResNet-18 proxy that it reloads from disk every
iteration). Give it a checkout of either or both; each script runs unchanged in a scratch folder on CIFAR-10-shaped
random data (a fake ``cifar-10-batches-py`` of 5,000 images: the loop only samples 256 per class) with their
defaults (ConvNet, IPC 10, batch_real 256, DSA ``color_crop_cutout_flip_scale_rotate``, SGD lr 1 momentum 0.5) and
no evaluation (``--num_eval 0``). ``sitecustomize.py`` skips torchvision's download check of the fake archive and
times ``SGD.step`` (the image update ends every iteration); the first iteration is excluded. The proxy is a
randomly initialized ResNet-18 of their ``networks.py`` (the same cost as a pre-trained one). Nothing of the
authors' code enters this repository.

    git -C /tmp clone https://github.com/VICO-UoE/DatasetCondensation dc-official
    git -C /tmp clone https://github.com/ndhg1213/CMIDD cmidd-official
    python scripts/bench_dm_official.py --dm /tmp/dc-official --dm_cmi /tmp/cmidd-official --iterations 5
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

TIMING_PATCHES = '''import atexit, json, os, time
import torch, torchvision.datasets.cifar as cifar

cifar.check_integrity = lambda *args, **kwargs: True  # a fake archive: nothing to verify, nothing to download
_marks = []
_step = torch.optim.SGD.step
def _timed(self, *args, **kwargs):
    out = _step(self, *args, **kwargs)
    _marks.append(time.perf_counter())
    return out
torch.optim.SGD.step = _timed
atexit.register(lambda: json.dump(_marks, open(os.environ["TIMING_OUT"], "w")))
'''


def write_fake_cifar10(root: Path, per_class: int = 500, seed: int = 0) -> None:
    """torchvision's CIFAR-10 layout (five training batches and a test batch) holding random images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    for name, part in [(f"data_batch_{i + 1}", chunk) for i, chunk in enumerate(np.array_split(labels, 5))] + \
            [("test_batch", labels[:1000])]:
        batch = {"data": rng.integers(0, 256, (len(part), 3072), dtype=np.uint8), "labels": part.tolist()}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)


def run_loop(source: Path, label: str, iterations: int, ipc: int, with_proxy: bool) -> None:
    """Copy one release's scripts into a scratch folder, run its ``main_DM.py`` and print s/it."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) / "run"
        shutil.copytree(source, work, ignore=shutil.ignore_patterns("docs", "*.png"))
        if (work / "networks.py").is_file():  # CMIDD's utils import their networks as pretrain.networks
            (work / "pretrain").mkdir(exist_ok=True)
            shutil.copy(work / "networks.py", work / "pretrain" / "networks.py")
        (work / "sitecustomize.py").write_text(TIMING_PATCHES)
        write_fake_cifar10(Path(scratch) / "data")
        env = {**os.environ, "PYTHONPATH": str(work), "TIMING_OUT": str(work / "timing.json")}
        if with_proxy:  # main_DM.py loads a random file of ../CIFAR10_pre_res every iteration
            (Path(scratch) / "CIFAR10_pre_res").mkdir()
            proxy = Path(scratch) / "CIFAR10_pre_res" / "proxy.pt"
            make = ("import torch; from networks import ResNet18; torch.manual_seed(0); "
                    f"torch.save(ResNet18(3, 10).state_dict(), {str(proxy)!r})")
            subprocess.run([sys.executable, "-c", make], cwd=work, env=env, check=True)
        command = [sys.executable, "main_DM.py", "--dataset", "CIFAR10", "--model", "ConvNet", "--ipc", str(ipc),
                   "--Iteration", str(iterations), "--num_exp", "1", "--num_eval", "0",
                   "--data_path", str(Path(scratch) / "data"), "--save_path", str(Path(scratch) / "result")]
        run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"error: {label}'s main_DM.py failed:\n{run.stderr[-2000:]}")
        marks = json.loads((work / "timing.json").read_text())
    seconds = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    print(f"{label}: {statistics.mean(seconds):.2f} s/it over {len(seconds)} iterations (median "
          f"{statistics.median(seconds):.2f}), IPC {ipc}, batch_real 256, DSA, fp32; peak RSS so far {peak_gb:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dm", type=Path, help="a checkout of VICO-UoE/DatasetCondensation (DM)")
    parser.add_argument("--dm_cmi", type=Path, help="a checkout of ndhg1213/CMIDD (DM + CMI)")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations (after one warm-up)")
    parser.add_argument("--ipc", type=int, default=10)
    args = parser.parse_args()
    loops = [(args.dm, "", "authors' DM (DatasetCondensation main_DM.py)", False),
             (args.dm_cmi, "DC-DSA-DM", "authors' DM + CMI (CMIDD DC-DSA-DM/main_DM.py)", True)]
    chosen = [(checkout / sub, label, proxy) for checkout, sub, label, proxy in loops if checkout is not None]
    if not chosen:
        parser.error("give --dm and/or --dm_cmi (checkouts of the authors' repositories)")
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    for folder, _, _ in chosen:
        if not (folder / "main_DM.py").is_file():
            sys.exit(f"error: {folder} has no main_DM.py; pass a checkout of the repository named in --help")
    for folder, label, proxy in chosen:
        run_loop(folder, label, args.iterations, args.ipc, proxy)


if __name__ == "__main__":
    main()
