"""MTT's iteration time and peak memory against ``syn_steps``, for the unrolled and the recomputed gradient.

Random tensors stand in for CIFAR-10 (timing only: 10 classes, 3x32x32, 300 images per class) and for its
experts (one ConvNet-3 expert trained 2 epochs on those tensors with MTT's buffer recipe); the trajectory settings
are the CIFAR-10 IPC 10 preset's (the whole set per student step, DSA, expert_epochs 2), one trajectory per
iteration, the student at ``--precision`` (default auto: bf16 where native), optionally with the CMI term
(a ResNet-18 instance-norm proxy, λ 100). The timed loop is the engine
users run (:class:`cmidd_hf.engine.distill.Distiller`) on one process; every setting runs in its own
subprocess, so its peak resident memory (``ru_maxrss``) is its own. ``graph MB`` is that peak minus the resident
memory just before the run (data, experts, networks): what the gradient computation itself holds.

    python scripts/bench_mtt.py                                   # IPC 10, syn_steps 10 20 30 60, both gradients
    python scripts/bench_mtt.py --syn_steps 30 --gradient unrolled --iterations 5 --cmi
    python scripts/bench_mtt.py --syn_steps 10 30 --gradient unrolled --precision fp32
    python scripts/bench_mtt.py --syn_steps 30 --gradient unrolled --compile false   # the closed-form double
                                                                                     # backward eager
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

PAGE_MB = __import__("os").sysconf("SC_PAGE_SIZE") / 2**20


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_MB


def cifar_like():
    from cmidd_hf import RealImageStore
    from cmidd_hf.data.loading import ImageClassificationData

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (10 * 300, 3, 32, 32), dtype=torch.uint8, generator=g)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    store = RealImageStore(u8, torch.arange(10).repeat_interleave(300), 10, mean, std, (3, 32, 32))
    return ImageClassificationData("cifar10", store, None, None, [str(c) for c in range(10)], mean, std)


def measure(ipc: int, syn_steps: int, gradient: str, with_cmi: bool, iterations: int, warmup: int,
            experts_dir: str, precision: str, compile: bool) -> dict:
    from accelerate import Accelerator

    from cmidd_hf import CMIRegularizer, build_network
    from cmidd_hf.artifacts.experts import ExpertTrajectories
    from cmidd_hf.engine.distill import Distiller
    from cmidd_hf.engine.run_folder import RunFolder
    from cmidd_hf.methods import MTT, MethodContext, MTTConfig

    data = cifar_like()
    config = MTTConfig(experts=f"local-dir:{experts_dir}", syn_steps=syn_steps, expert_epochs=2, max_start_epoch=1,
                       lr_img=100.0, lr_teacher=0.001, gradient=gradient)
    config.validate()
    context = MethodContext(real=data.train, ipc=ipc, precision=precision, augmentation=config.augmentation("cifar10"),
                            dataset="cifar10", compile=compile, artifacts={"experts": ExpertTrajectories(experts_dir)})
    method = MTT(config, context)
    regularizer = None
    if with_cmi:
        regularizer = CMIRegularizer([build_network("resnet18_cifar", 10, 3, (32, 32))], weight=100.0,
                                     normalization="global", compile=compile)
    before = resident_mb()
    with tempfile.TemporaryDirectory() as out:
        Distiller(Accelerator(cpu=True), method, method.init_synthetic(), regularizer, warmup + iterations, out, {},
                  progress=False).run()
        records = [json.loads(line) for line in RunFolder(out).metrics.read_text().splitlines()]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = [r["seconds"] for r in records][warmup:]
    return {"mean_s": statistics.mean(times), "peak_rss_mb": peak, "graph_mb": peak - before}


def train_bench_experts(folder: Path) -> None:
    from cmidd_hf.artifacts.experts import ExpertRecipe, train_experts

    train_experts(ExpertRecipe(num_experts=1, epochs=2), cifar_like(), folder, "cifar10", compile=False,
                  progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--syn_steps", type=int, nargs="+", default=[10, 20, 30, 60])
    parser.add_argument("--gradient", nargs="+", default=["unrolled", "recompute"], choices=["unrolled", "recompute"])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first iterations")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="the student's precision (auto: bf16 where native)")
    parser.add_argument("--compile", default="true", choices=["true", "false"],
                        help="the run's compile setting (true, the default: the student's instance norms run a "
                             "compiled double backward)")
    parser.add_argument("--cmi", action="store_true", help="add the CMI term (ResNet-18 proxy)")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from cmidd_hf.engine.precision import resolve_precision

    if args._child:
        settings = json.loads(args._child)
        print(json.dumps(measure(**settings)))
        return
    print(f"MTT iteration, CIFAR-10 shape, IPC {args.ipc} (whole set per student step), "
          f"precision {args.precision} ({resolve_precision(args.precision, 'cpu')} here), DSA, one trajectory"
          f"{', + CMI (ResNet-18 proxy)' if args.cmi else ''}, compile {args.compile}, "
          f"{torch.get_num_threads()} threads, "
          f"{args.iterations} timed iterations after {args.warmup}")
    with tempfile.TemporaryDirectory() as experts:
        train_bench_experts(Path(experts))
        print(f"{'syn_steps':>9} | {'gradient':>9} | {'s/it':>7} | {'peak MB':>8} | {'graph MB':>8}")
        for steps in args.syn_steps:
            for gradient in args.gradient:
                settings = {"ipc": args.ipc, "syn_steps": steps, "gradient": gradient, "with_cmi": args.cmi,
                            "iterations": args.iterations, "warmup": args.warmup, "experts_dir": experts,
                            "precision": args.precision, "compile": args.compile == "true"}
                out = subprocess.run([sys.executable, __file__, "--_child", json.dumps(settings)], capture_output=True,
                                     text=True, check=True).stdout.strip().splitlines()[-1]
                r = json.loads(out)
                print(f"{steps:>9} | {gradient:>9} | {r['mean_s']:7.2f} | {r['peak_rss_mb']:8.0f} | "
                      f"{r['graph_mb']:8.0f}", flush=True)


if __name__ == "__main__":
    main()
