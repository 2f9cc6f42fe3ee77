"""Time one evaluation run: ours (compiled, tensor-resident, auto precision) vs a plain eager fp32 DataLoader loop.

Both train ConvNet-3 on 100 CIFAR-shaped images with the ``dsa`` protocol (per-sample DSA, SGD, lr x0.1 at
half) and test on 10,000 images, in the same process. Random tensors: this measures time, not accuracy.
Ours runs in the library's default precision, ``auto``: bf16 on a CPU with native bf16 (AVX512-BF16 / AMX),
fp32 elsewhere; ``--precision`` forces one.

    python scripts/bench_eval.py                 # 1000 epochs, as the protocol
    python scripts/bench_eval.py --epochs 100    # a quick look

The compiled path's time includes compiling. Inductor caches compiled kernels on disk, so a second run on the
same machine compiles faster; for the first-run figure point it at an empty cache:

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python scripts/bench_eval.py

It also prints the run's arithmetic floor (``scripts/arithmetic_floor.py``: FLOPs of the training steps and the
test pass, counted on eager 1- and 2-epoch runs, over a measured matrix-product rate) and how far each loop is
from it.

``--accuracy_runs N`` also trains N networks each way on a random IPC-10 subset of mnist-5k and prints both
accuracies, to show the fast path does not change the result beyond run-to-run noise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from arithmetic_floor import counted_gflop, matmul_gflops
from torch.utils.data import DataLoader, TensorDataset

from cmidd_hf.data.augment import DiffAugment, default_augmentation
from cmidd_hf.data.loading import RealImageStore, load_image_classification
from cmidd_hf.engine.precision import PRECISIONS, resolve_precision
from cmidd_hf.evaluation.protocols import get_protocol
from cmidd_hf.evaluation.trainer import NetworkTrainer, TensorSet
from cmidd_hf.models import build_network


def plain_eager_run(images, labels, test_u8, test_labels, store, protocol, seed) -> float:
    """The reference: fp32, eager, DataLoader batches, per-sample DSA, test through a DataLoader."""
    torch.manual_seed(seed)
    net = build_network("convnet3", 10, images.shape[1], images.shape[2:])
    optimizer = torch.optim.SGD(net.parameters(), lr=protocol.lr, momentum=protocol.momentum,
                                weight_decay=protocol.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, protocol.milestone_epochs(), protocol.gamma)
    augment = DiffAugment(protocol.augmentation)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(images, labels), batch_size=protocol.batch_size, shuffle=True)
    net.train()
    for _ in range(protocol.epochs):
        for x, y in loader:
            loss = F.cross_entropy(net(augment(x, generator)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(TensorDataset(test_u8, test_labels), batch_size=256):
            correct += int((net(store.normalize(x)).argmax(1) == y).sum())
    return correct / len(test_labels)


def fast_run(images, labels, store, protocol, seed, precision, compile: bool = True) -> float:
    trainer = NetworkTrainer("convnet3", 10, tuple(images.shape[1:]), protocol, "cpu", precision, compile=compile)
    trainer.train(TensorSet(images, labels, "cpu"), seed)
    return trainer.accuracy(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--accuracy_runs", type=int, default=0)
    parser.add_argument("--accuracy_epochs", type=int, default=300)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    args = parser.parse_args()
    precision = resolve_precision(args.precision, "cpu")

    protocol = get_protocol("dsa", epochs=args.epochs)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(100, 3, 32, 32, generator=g)
    labels = torch.arange(10).repeat_interleave(10)
    test_u8 = torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8, generator=g)
    test_labels = torch.randint(0, 10, (10000,), generator=g)
    store = RealImageStore(test_u8, test_labels, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                           (3, 32, 32))

    # the plain loop runs first, so it meets glibc's allocator as any fresh process does
    start = time.perf_counter()
    plain_eager_run(images, labels, test_u8, test_labels, store, protocol, seed=0)
    plain = time.perf_counter() - start
    start = time.perf_counter()
    fast_run(images, labels, store, protocol, seed=0, precision=precision)
    fast = time.perf_counter() - start
    print(f"one run, ConvNet-3, 100 images, {args.epochs} epochs, test on 10,000 (threads={torch.get_num_threads()}, "
          f"CPU {torch.backends.cpu.get_cpu_capability()})")
    print(f"  plain eager fp32 DataLoader loop: {plain:8.1f} s")
    print(f"  cmidd_hf ({precision}, compiled, tensor): {fast:8.1f} s   (compile time included)")
    print(f"  ratio: {fast / plain:.3f}x")
    one, two = (counted_gflop(lambda e=e: fast_run(images, labels, store, get_protocol("dsa", epochs=e), 0, "fp32",
                                                   compile=False)) for e in (1, 2))
    gflop = (one - (two - one)) + args.epochs * (two - one)  # the test pass once, the training steps per epoch
    for name, seconds, rate_precision in (("plain eager fp32", plain, "fp32"), (f"cmidd_hf {precision}", fast,
                                                                                  precision)):
        floor = gflop / matmul_gflops(rate_precision)
        print(f"  {name}: {gflop:.0f} GFLOP, floor {floor:.1f} s at this CPU's {rate_precision} matrix-product "
              f"rate, {seconds / floor:.1f}x the floor")

    if args.accuracy_runs:
        data = load_image_classification("mnist-5k")
        protocol = get_protocol("dsa", epochs=args.accuracy_epochs, augmentation=default_augmentation(data.name))
        fast_acc, plain_acc = [], []
        for run in range(args.accuracy_runs):
            pos = data.train.balanced_subset(10, torch.Generator().manual_seed(run))
            x, y = data.train.images(pos), data.train.labels[pos]
            fast_acc.append(fast_run(x, y, data.test, protocol, seed=run, precision=precision))
            trainer = NetworkTrainer("convnet3", 10, data.image_shape, protocol, "cpu", "fp32", compile=False)
            trainer.train(TensorSet(x, y, "cpu"), run)
            plain_acc.append(trainer.accuracy(data.test))
        for name, acc in ((f"{precision}+compile", fast_acc), ("fp32 eager", plain_acc)):
            print(f"  mnist-5k random IPC 10, {args.accuracy_epochs} epochs, {name:12s}: "
                  f"{100 * np.mean(acc):.2f} ± {100 * np.std(acc):.2f} %  {[round(100 * a, 1) for a in acc]}")


if __name__ == "__main__":
    main()
