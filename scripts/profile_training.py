"""Where one network's training step goes, by operator and input shape (``torch.profiler``): the path experts,
evaluation networks and proxies train on (``NetworkTrainer``: compiled unless ``--no_compile``, ``--precision``,
channels-last when compiled), on the first ``--batches`` batches of a real dataset's training split.

    python scripts/profile_training.py                                   # Fashion-MNIST, ConvNet-3, MTT's experts
    python scripts/profile_training.py --protocol dsa --threads 2 --rows 20

The first pass over the batches compiles and warms up; a second is timed, a third profiled. Prints milliseconds
per batch and the operators with the most self time (convolution backward rows carry their input shapes, so each
layer is its own row). Numbers depend on the CPU kind: say which when quoting them.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from cmidd_hf import load_image_classification
from cmidd_hf.artifacts.experts import ExpertRecipe
from cmidd_hf.evaluation.protocols import get_protocol
from cmidd_hf.evaluation.trainer import NetworkTrainer, StoreSet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--arch", default="convnet3")
    parser.add_argument("--protocol", default="expert",
                        help="'expert' (MTT's buffer recipe: SGD 0.01, batch 256, DSA) or a registered protocol")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--no_compile", action="store_true")
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args(argv)
    for name in ("batches", "threads", "rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    torch.set_num_threads(args.threads)
    try:
        data = load_image_classification(args.dataset)
        protocol = (ExpertRecipe(arch=args.arch, epochs=1).protocol(data.name) if args.protocol == "expert"
                    else get_protocol(args.protocol, epochs=1))  # one pass over the batches per train() call
    except ValueError as err:  # an unknown dataset (DataError) or protocol
        print(f"error: {err}", file=sys.stderr)
        return 2
    images = data.train.subset(torch.arange(protocol.batch_size * args.batches))
    trainer = NetworkTrainer(args.arch, data.num_classes, data.image_shape, protocol, None,
                             precision=args.precision, compile=not args.no_compile)
    train_set = StoreSet(images, None, trainer.device)
    trainer.reset(0)
    trainer.train(train_set, 0)  # compile and warm up
    start = time.perf_counter()
    trainer.train(train_set, 1)
    per_batch = (time.perf_counter() - start) / args.batches
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        trainer.train(train_set, 2)
    print(f"{args.arch} on {data.name} {tuple(data.image_shape)}, protocol {protocol.name} (batch "
          f"{protocol.batch_size}), precision {args.precision}, compile {not args.no_compile}, {args.threads} "
          f"thread(s): {1000 * per_batch:.1f} ms per batch")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                             max_name_column_width=40, max_shapes_column_width=100))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
