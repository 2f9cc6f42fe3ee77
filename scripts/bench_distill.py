"""Seconds per DM and DM+CMI iteration on CIFAR-10-shaped data, the CMI overhead, and peak memory.

Random tensors stand in for CIFAR-10 (timing only): 10 classes, 3x32x32, batch_real 256 per class, DSA on,
a ResNet-18 (instance norm) proxy. Each configuration runs in its own subprocess so peak memory is its own.

    python scripts/bench_distill.py                      # IPC 10 and 50, fast path (auto precision + compile)
    python scripts/bench_distill.py --precision fp32 --no_compile
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from cmidd_hf.precision import PRECISIONS, resolve_precision


def measure(ipc: int, with_cmi: bool, precision: str, compile: bool, steps: int, cmi_every: int) -> dict:
    import cmidd_hf  # noqa: F401  (registers resnet18_cifar)
    from cmidd_hf import CMIRegularizer, RealImageStore, build_network
    from cmidd_hf.cpu_memory import reuse_freed_memory
    from cmidd_hf.distill import SyntheticImages
    from cmidd_hf.methods import DMObjective

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (10 * 300, 3, 32, 32), dtype=torch.uint8, generator=g)
    store = RealImageStore(u8, torch.arange(10).repeat_interleave(300), 10, (0.4914, 0.4822, 0.4465),
                           (0.2023, 0.1994, 0.2010), (3, 32, 32))
    objective = DMObjective(store, batch_real=256, seed=0, precision=precision, compile=compile)
    regularizer = None
    if with_cmi:
        proxy = build_network("resnet18_cifar", 10, 3, (32, 32))
        regularizer = CMIRegularizer([proxy], weight=8000, every=cmi_every, precision=precision)
    synthetic = SyntheticImages.from_real(store, ipc, seed=0)
    optimizer = torch.optim.SGD([synthetic.images], lr=1.0, momentum=0.5)
    times = []
    with reuse_freed_memory():  # as the distillation loop does on CPU
        for step in range(steps + 2):
            start = time.perf_counter()
            loss = objective.loss(synthetic.images, ipc, range(10), step)
            if regularizer is not None:
                loss = loss + regularizer(synthetic.images, synthetic.labels, step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mean_s": statistics.mean(times[2:]), "median_s": statistics.median(times[2:]), "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--steps", type=int, default=10, help="timed iterations (after 2 warm-up ones)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--no_compile", action="store_true")
    parser.add_argument("--cmi_every", type=int, default=1)
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        ipc, with_cmi = json.loads(args._child)
        print(json.dumps(measure(ipc, with_cmi, args.precision, not args.no_compile, args.steps, args.cmi_every)))
        return
    print(f"DM iteration, CIFAR-10 shape, batch_real 256/class, DSA, precision {args.precision} "
          f"({resolve_precision(args.precision, 'cpu')} here), "
          f"compile {not args.no_compile}, ResNet-18 proxy, CMI every {args.cmi_every}, threads "
          f"{torch.get_num_threads()}")
    for ipc in args.ipc:
        result = {}
        for with_cmi in (False, True):
            child = [sys.executable, __file__, "--_child", json.dumps([ipc, with_cmi]), "--steps", str(args.steps),
                     "--precision", args.precision, "--cmi_every", str(args.cmi_every)]
            child += ["--no_compile"] if args.no_compile else []
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            result[with_cmi] = json.loads(out)
        dm, cmi = result[False], result[True]
        overhead = 100 * (cmi["mean_s"] / dm["mean_s"] - 1)
        print(f"IPC {ipc:3d}: DM {dm['mean_s']:.3f} s/it (median {dm['median_s']:.3f}, peak {dm['peak_rss_mb']:.0f} MB)"
              f" | DM+CMI {cmi['mean_s']:.3f} s/it (median {cmi['median_s']:.3f}, peak {cmi['peak_rss_mb']:.0f} MB)"
              f" | CMI overhead {overhead:+.1f} % (of the means)")


if __name__ == "__main__":
    main()
