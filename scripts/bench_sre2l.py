"""SRe2L recover at ImageNet shape on this machine: seconds per iteration, and peak memory against the set size.

``speed``: one block of 100 images (one of each of 100 classes) at 224², ResNet-18 teacher (timm's ``resnet18``,
the torchvision architecture; random weights, whose BN statistics cost the same), the authors' ImageNet
augmentation (random-resized crop, flip, roll by 0..32), ``--iterations`` Adam steps; prints the mean seconds of
the iterations after the first. Compare with ``scripts/bench_sre2l_official.py`` (the authors' script).

``memory``: the whole recover of a 1,000-class set at 224² (no real images: a stand-in store, never read) with
a tiny timm BN teacher, for each ``--ipc`` in its own process; prints the peak resident memory next to what
the set would take held whole as float pixels with Adam's two moments. Blocks stream to disk as uint8 shards,
so the peak should not grow with the set.

    python scripts/bench_sre2l.py speed --iterations 4
    python scripts/bench_sre2l.py memory --ipc 1 2
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from accelerate import Accelerator

from cmidd_hf.data.loading import RealImageStore
from cmidd_hf.engine.blocks import BlockwiseDistiller, LocalProcess
from cmidd_hf.engine.distill import Distiller
from cmidd_hf.methods import MethodContext, SRe2L, SRe2LConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def stand_in_store(num_classes: int, size: int) -> RealImageStore:
    """One (never read) black image per class: the recover step reads no real images."""
    pixels = torch.zeros(1, 3, size, size, dtype=torch.uint8).expand(num_classes, 3, size, size)
    return RealImageStore(pixels, torch.arange(num_classes), num_classes, IMAGENET_MEAN, IMAGENET_STD,
                          (3, size, size))


def build(teacher: str, num_classes: int, size: int, ipc: int, iterations: int, precision: str) -> SRe2L:
    config = SRe2LConfig(teacher=teacher, jitter=32, flip=True, random_resized_crop=True, classes_per_block=100,
                         images_per_block=1)
    config.validate()
    network = timm.create_model(teacher, num_classes=num_classes).eval()
    return SRe2L(config, MethodContext(real=stand_in_store(num_classes, size), ipc=ipc, seed=0, precision=precision,
                                       artifacts={"teacher": network}, iterations=iterations))


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def speed(args) -> None:
    method = build(args.teacher, 1000, args.size, 1, args.iterations, args.precision)
    block = method.blocks()[0]
    marks: list[float] = []
    losses = method.losses

    def timed(*a, **k):
        marks.append(time.perf_counter())
        return losses(*a, **k)

    method.losses = timed
    with tempfile.TemporaryDirectory() as out:
        Distiller(LocalProcess(torch.device("cpu"), verbose=False), method, method.init_block(block), None,
                  args.iterations, out, {}, progress=False).run()
    marks.append(time.perf_counter())
    seconds = [b - a for a, b in zip(marks[1:], marks[2:], strict=False)]
    print(f"cmidd-hf SRe2L recover, {args.teacher}, batch {block.size} at {args.size}², precision {method.precision}, "
          f"{torch.get_num_threads()} threads: {statistics.mean(seconds):.2f} s/it over {len(seconds)} iterations "
          f"({', '.join(f'{s:.2f}' for s in seconds)}), peak RSS {peak_gb():.2f} GB")


def memory_one(args) -> None:
    (ipc,) = args.ipc
    method = build(args.teacher, 1000, args.size, ipc, args.iterations, args.precision)
    blocks = method.blocks()
    with tempfile.TemporaryDirectory() as out:
        BlockwiseDistiller(Accelerator(cpu=True), method, None, args.iterations, out, {}, IMAGENET_MEAN,
                           IMAGENET_STD, progress=False).run()
        shards = sum(p.stat().st_size for p in (Path(out) / "blocks").glob("*.safetensors"))
    whole = 1000 * ipc * 3 * args.size ** 2 * 4 * 3 / 1024 ** 3  # float pixels + Adam's two moments
    print(f"ipc {ipc}: {len(blocks)} blocks of {blocks[0].size}, {args.iterations} iterations each: peak RSS "
          f"{peak_gb():.2f} GB; the set held whole with Adam would be {whole:.2f} GB; shards on disk "
          f"{shards / 1024 ** 2:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["speed", "memory"])
    parser.add_argument("--teacher", default=None, help="timm architecture (speed: resnet18; memory: resnet10t)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iterations", type=int, default=None, help="per block (speed: 4; memory: 2)")
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "speed":
        args.teacher, args.iterations = args.teacher or "resnet18", args.iterations or 4
        speed(args)
        return
    args.teacher, args.iterations = args.teacher or "resnet10t", args.iterations or 2
    if args.one:
        memory_one(args)
        return
    for ipc in args.ipc:  # one process per size: ru_maxrss is per process
        subprocess.run([sys.executable, __file__, "memory", "--one", "--ipc", str(ipc), "--teacher", args.teacher,
                        "--size", str(args.size), "--iterations", str(args.iterations), "--precision",
                        args.precision], check=True)


if __name__ == "__main__":
    main()
