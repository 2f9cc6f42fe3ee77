"""Seconds per (outer) iteration of a method with and without CMI on CIFAR-10-shaped data, and peak memory.

Random tensors stand in for CIFAR-10 (timing only): 10 classes, 3x32x32, 300 images per class, the method's
official settings (DM: batch_real 256, DSA on; DC/DSA: batch_real 256, get_loops(IPC), network SGD 0.01; IDC:
factor 2, 100 image steps per iteration, n_data 2000; IDM: factor 2, a pool of networks), a ResNet-18 (instance
norm) proxy for the CMI term (λ as the CIFAR-10 presets: global 8000 / 50000 for DM / DC / DSA, per class 100
for IDC, global 1000 for IDM). ``--set key=value`` overrides a method setting, e.g. ``--set inner_loop=10`` to
time IDC's image steps on a shorter iteration (the line reports seconds per image step too). The timed loop is
the engine users run (:class:`cmidd_hf.engine.distill.Distiller`), on one process; each configuration runs in its own
subprocess so that peak memory is its own. Iteration times come from the run's metrics.jsonl (``seconds``),
warm-up excluded.

Beside each time it prints the *arithmetic floor* of the configuration on this CPU: the FLOPs of one iteration
(convolutions and matrix products, counted with ``torch.utils.flop_counter`` on an eager run of the same
iteration, the CMI term included) divided by the rate of a large matrix product measured here at the run's
precision, and how many times that floor the iteration takes — comparable across CPU kinds.

    python scripts/bench_distill.py --method dm                  # IPC 1 and 10, auto precision, compiled DM net
    python scripts/bench_distill.py --method dsa --ipc 1 10 --iterations 2
    python scripts/bench_distill.py --method dc --precision fp32 --no_compile
    python scripts/bench_distill.py --method idc --ipc 10 --iterations 1 --set inner_loop=10
    python scripts/bench_distill.py --method idm --ipc 10
    python scripts/bench_distill.py --method dm --ipc 10 --iterations 3 --profile 15   # + where the time goes

``--profile K`` also prints, for each configuration, the K operators with the most self CPU time per iteration
(``torch.profiler`` over the warm-up and timed iterations, divided by their number; the compiler's own phases are
left out; the times printed then include the profiler's overhead: time without it).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile

import torch
import yaml
from arithmetic_floor import counted_gflop, matmul_gflops

from cmidd_hf.engine.precision import PRECISIONS, resolve_precision

CMI = {"dm": (8000, "global"), "dc": (50000, "global"), "dsa": (50000, "global"), "idc": (100, "per_class"),
       "idm": (1000, "global")}


def build(method: str, store, ipc: int, with_cmi: bool, precision: str, compile: bool, cmi_every: int,
          overrides: dict):
    """The method (and CMI regularizer) of one configuration."""
    from cmidd_hf import CMIRegularizer, build_network
    from cmidd_hf.methods import MethodContext, get_method

    cls = get_method(method)
    config = cls.config_class(**overrides)
    config.validate()
    context = MethodContext(real=store, ipc=ipc, precision=precision, compile=compile,
                            augmentation=config.augmentation("cifar10"), dataset="cifar10")
    regularizer = None
    if with_cmi:
        proxy = build_network("resnet18_cifar", 10, 3, (32, 32))
        weight, normalization = CMI[method]
        regularizer = CMIRegularizer([proxy], weight=weight, normalization=normalization, every=cmi_every,
                                     precision=precision, compile=compile)
    return cls(config, context), regularizer


def operator_table(profile, iterations: int, top: int) -> str:
    """The ``top`` operators by self CPU time, in ms per iteration, with their share of the profiled time."""
    events = sorted((e for e in profile.key_averages() if "dynamo_timed" not in e.key),  # compilation: warm-up
                    key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    lines = [f"      {e.key[:52]:52s} {e.self_cpu_time_total / 1e3 / iterations:9.1f} ms/it "
             f"{100 * e.self_cpu_time_total / total:5.1f} %  ({e.count // iterations} calls/it)" for e in events[:top]]
    return "\n".join([f"      {'operator (self CPU time)':52s} {total / 1e3 / iterations:9.1f} ms/it in all", *lines])


def measure(method: str, ipc: int, with_cmi: bool, precision: str, compile: bool, iterations: int,
            warmup: int, cmi_every: int, overrides: dict, profile_top: int = 0) -> dict:
    from accelerate import Accelerator

    import cmidd_hf  # noqa: F401  (registers resnet18_cifar)
    from cmidd_hf import RealImageStore
    from cmidd_hf.engine.distill import Distiller
    from cmidd_hf.engine.run_folder import RunFolder

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (10 * 300, 3, 32, 32), dtype=torch.uint8, generator=g)
    store = RealImageStore(u8, torch.arange(10).repeat_interleave(300), 10, (0.4914, 0.4822, 0.4465),
                           (0.2023, 0.1994, 0.2010), (3, 32, 32))
    algorithm, regularizer = build(method, store, ipc, with_cmi, precision, compile, cmi_every, overrides)
    with tempfile.TemporaryDirectory() as out:
        distiller = Distiller(Accelerator(cpu=True), algorithm, algorithm.init_synthetic(), regularizer,
                              warmup + iterations, out, {}, progress=False)
        if profile_top:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                distiller.run()
        else:
            distiller.run()
        records = [json.loads(line) for line in RunFolder(out).metrics.read_text().splitlines()]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the timed run's, before the count
    eager, eager_regularizer = build(method, store, ipc, with_cmi, "fp32", False, cmi_every, overrides)
    with tempfile.TemporaryDirectory() as out:
        gflop = counted_gflop(Distiller(Accelerator(cpu=True), eager, eager.init_synthetic(), eager_regularizer, 1,
                                        out, {}, progress=False).run)
    times = [r["seconds"] for r in records][warmup:]
    return {"mean_s": statistics.mean(times), "median_s": statistics.median(times), "peak_rss_mb": peak_mb,
            "image_steps": algorithm.image_steps_per_iteration, "gflop": gflop,
            "profile": operator_table(profile, warmup + iterations, profile_top) if profile_top else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="dm", choices=sorted(CMI))
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed iterations (default: DM and IDM 10, DC/DSA/IDC 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first iterations")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--no_compile", action="store_true")
    parser.add_argument("--cmi_every", type=int, default=1)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="method settings, e.g. inner_loop=10 (values parsed as YAML)")
    parser.add_argument("--profile", type=int, default=0, metavar="K",
                        help="also print the K operators with the most self CPU time per iteration")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.overrides)}
    iterations = args.iterations or (10 if args.method in ("dm", "idm") else 2)
    if args._child:
        ipc, with_cmi = json.loads(args._child)
        print(json.dumps(measure(args.method, ipc, with_cmi, args.precision, not args.no_compile, iterations,
                                 args.warmup, args.cmi_every, overrides, args.profile)))
        return
    print(f"{args.method.upper()} iteration, CIFAR-10 shape, official settings, precision {args.precision} "
          f"({resolve_precision(args.precision, 'cpu')} here), compile {not args.no_compile}, ResNet-18 proxy, "
          f"CMI every {args.cmi_every}, {torch.get_num_threads()} threads, {iterations} timed iterations"
          + (f", settings {overrides}" if overrides else ""))
    rate = matmul_gflops(args.precision)
    print(f"matrix-product rate here: {rate:.0f} GFLOP/s ({resolve_precision(args.precision, 'cpu')})")
    for ipc in args.ipc:
        result = {}
        for with_cmi in (False, True):
            child = [sys.executable, __file__, "--_child", json.dumps([ipc, with_cmi]), "--method", args.method,
                     "--iterations", str(iterations), "--warmup", str(args.warmup), "--precision", args.precision,
                     "--cmi_every", str(args.cmi_every), "--profile", str(args.profile), "--set", *args.overrides]
            child += ["--no_compile"] if args.no_compile else []
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            result[with_cmi] = json.loads(out)
        base, cmi = result[False], result[True]
        overhead = 100 * (cmi["mean_s"] / base["mean_s"] - 1)
        name = args.method.upper()
        steps = base["image_steps"]
        print(f"IPC {ipc:3d} ({steps} image steps/it; {base['mean_s'] / steps:.3f} / {cmi['mean_s'] / steps:.3f} s per "
              f"image step): {name} {base['mean_s']:.3f} s/it "
              f"(median {base['median_s']:.3f}, peak {base['peak_rss_mb']:.0f} MB) | {name}+CMI {cmi['mean_s']:.3f} "
              f"s/it (median {cmi['median_s']:.3f}, peak {cmi['peak_rss_mb']:.0f} MB) | CMI overhead "
              f"{overhead:+.1f} %")
        for label, r in ((name, base), (f"{name}+CMI", cmi)):
            floor = r["gflop"] / rate
            print(f"    {label}: {r['gflop']:.1f} GFLOP per iteration, floor {floor:.3f} s, "
                  f"{r['mean_s'] / floor:.1f}x the floor")
            if r["profile"]:
                print(r["profile"])


if __name__ == "__main__":
    main()
