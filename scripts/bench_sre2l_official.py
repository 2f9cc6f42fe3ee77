"""Time the authors' SRe2L recover (``SRe2L/recover/data_synthesis.py``) on this CPU, beside
``scripts/bench_sre2l.py speed``.

Give it a checkout of VILA-Lab/SRe2L; it copies ``recover/data_synthesis.py`` and ``recover/utils.py`` into a
scratch folder and runs them unchanged with the authors' ImageNet settings (ResNet-18, batch 100, lr 0.25,
r_bn 0.01, no TV / L2 priors, as ``recover.sh``) for ``--iterations`` iterations per batch of 100 classes
(all 1,000 classes: ten batches). ``sitecustomize.py`` makes it run on a CPU without downloads: torchvision
models are built with random weights (the pretrained download is the only difference; the cost is the same),
``.cuda()`` is a no-op and ``device="cuda"`` / ``.to("cuda")`` mean the CPU; ``Adam.step`` is timed. The first
iteration of each batch is excluded (it also runs the verifier once). Nothing of the authors' code enters this
repository.

    git -C /tmp clone https://github.com/VILA-Lab/SRe2L sre2l-official
    python scripts/bench_sre2l_official.py /tmp/sre2l-official --iterations 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CPU_PATCHES = '''import atexit, json, os, time
import torch, torchvision.models as models

def _cpu(device):
    return "cpu" if isinstance(device, str) and device.startswith("cuda") else device

torch.Tensor.cuda = lambda self, *args, **kwargs: self
torch.nn.Module.cuda = lambda self, *args, **kwargs: self
_to = torch.Tensor.to
torch.Tensor.to = lambda self, *args, **kwargs: _to(self, *[_cpu(a) for a in args],
                                                       **{k: _cpu(v) for k, v in kwargs.items()})
_randn = torch.randn
torch.randn = lambda *args, **kwargs: _randn(*args, **{k: _cpu(v) for k, v in kwargs.items()})
for _name in ("resnet18", "resnet50", "mobilenet_v2"):
    _build = getattr(models, _name)
    def _random(*args, _build=_build, pretrained=False, **kwargs):
        return _build(*args, weights=None, **kwargs)
    setattr(models, _name, _random)
    models.__dict__[_name] = _random
_marks = []
_step = torch.optim.Adam.step
def _timed(self, *args, **kwargs):
    out = _step(self, *args, **kwargs)
    _marks.append(time.perf_counter())
    return out
torch.optim.Adam.step = _timed
atexit.register(lambda: json.dump(_marks, open(os.environ["TIMING_OUT"], "w")))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("official", type=Path, help="a checkout of VILA-Lab/SRe2L")
    parser.add_argument("--iterations", type=int, default=3, help="iterations per batch of 100 classes")
    args = parser.parse_args()
    recover = args.official / "SRe2L" / "recover"
    if not (recover / "data_synthesis.py").is_file():
        sys.exit(f"error: {args.official} has no SRe2L/recover/data_synthesis.py; pass a checkout of VILA-Lab/SRe2L")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for name in ("data_synthesis.py", "utils.py"):
            shutil.copy(recover / name, work / name)
        (work / "sitecustomize.py").write_text(CPU_PATCHES)
        env = {**os.environ, "PYTHONPATH": str(work), "TIMING_OUT": str(work / "timing.json")}
        command = [sys.executable, "data_synthesis.py", "--arch-name", "resnet18", "--exp-name", "bench",
                   "--batch-size", "100", "--lr", "0.25", "--iteration", str(args.iterations), "--l2-scale", "0",
                   "--tv-l2", "0", "--r-bn", "0.01", "--verifier", "--store-best-images", "--ipc-start", "0",
                   "--ipc-end", "1", "--syn-data-path", str(work / "syn")]
        run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"error: the authors' data_synthesis.py failed:\n{run.stderr[-2000:]}")
        marks = json.loads((work / "timing.json").read_text())
    per_batch = [marks[i:i + args.iterations] for i in range(0, len(marks), args.iterations)]
    seconds = [b - a for batch in per_batch for a, b in zip(batch, batch[1:], strict=False)]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    print(f"authors' data_synthesis.py, ResNet-18, batch 100 at 224², fp32, {len(per_batch)} batches: "
          f"{statistics.mean(seconds):.2f} s/it over {len(seconds)} iterations (median "
          f"{statistics.median(seconds):.2f}), peak RSS {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
