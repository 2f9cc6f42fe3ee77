"""Seconds of the CMI term alone: a proxy's forward and input-backward on the synthetic images (CIFAR-10 shape).

Ours: :class:`cmidd_hf.CMIRegularizer` with a ``resnet18_cifar`` (instance-norm) proxy, as the distillation runs
it. Given ``--official`` (a checkout of ndhg1213/CMIDD), the same term on the authors' network: their
``DC-DSA-DM/networks.py`` ResNet18 (instance norm as GroupNorm), imported from the checkout at run time, its
``embed`` features scored by our class-aware CMI (the loss arithmetic is microseconds; the network is the cost).
Both run in this process on the same images, ``--repeats`` times after one warm-up, at the precision ``auto``
resolves to here (bf16 only where it is native). Ours runs twice: eager, and compiled channels-last (``compile=True``,
what a recipe runs by default; its compilation is in the warm-up).

    python scripts/bench_cmi_term.py --ipc 10 --official /tmp/cmidd-official
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

from cmidd_hf import CMIRegularizer, build_network
from cmidd_hf.cmi.class_aware import class_aware_cmi
from cmidd_hf.engine.precision import autocast, resolve_precision


def seconds(step, repeats: int) -> list[float]:
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--official", type=Path, help="a checkout of ndhg1213/CMIDD")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randn(10 * args.ipc, 3, 32, 32)
    labels = torch.arange(10).repeat_interleave(args.ipc)
    precision = resolve_precision("auto", "cpu")
    rows = []
    for compiled in (False, True):
        regularizer = CMIRegularizer([build_network("resnet18_cifar", 10, 3, (32, 32))], weight=8000,
                                     normalization="global", precision="auto", compile=compiled)

        def ours(regularizer=regularizer) -> None:
            x = images.clone().requires_grad_(True)
            regularizer(x, labels, 0)[0].backward()

        rows.append((f"ours (resnet18_cifar, CMIRegularizer, {'compiled, channels-last' if compiled else 'eager'})",
                     seconds(ours, args.repeats)))
    if args.official is not None:
        source = args.official / "DC-DSA-DM" / "networks.py"
        if not source.is_file():
            parser.error(f"{args.official} has no DC-DSA-DM/networks.py; pass a checkout of ndhg1213/CMIDD")
        spec = importlib.util.spec_from_file_location("cmidd_official_networks", source)
        networks = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(networks)
        theirs = networks.ResNet18(3, 10).train()  # as their main_DM.py
        theirs.requires_grad_(False)

        def official() -> None:
            x = images.clone().requires_grad_(True)
            with autocast("cpu", precision):
                features = theirs.embed(x)
            (8000 * class_aware_cmi(features, labels)).backward()

        rows.append(("authors' network (CMIDD networks.ResNet18.embed)", seconds(official, args.repeats)))
    print(f"CMI term, {len(images)} images 3x32x32, ResNet-18 forward + input-backward, {precision}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats after one warm-up")
    for name, times in rows:
        print(f"  {name}: {statistics.mean(times):.3f} s (median {statistics.median(times):.3f})")


if __name__ == "__main__":
    main()
