"""Evaluate the real-data baselines of a dataset: a random class-balanced subset of IPC images per class
(and optionally the whole training set), with the same protocol used for distilled sets.

    python scripts/evaluate_baseline.py --dataset mnist-5k --ipc 10 --arch convnet3
    python scripts/evaluate_baseline.py --dataset uoft-cs/cifar10 --ipc 10 50 --arch convnet3 alexnet_cifar
"""

from __future__ import annotations

import argparse
import json

from cmidd_hf import evaluate_random_subset, evaluate_whole_dataset, load_image_classification
from cmidd_hf.data.augment import default_augmentation
from cmidd_hf.evaluation.protocols import PROTOCOLS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist-5k", help="embedded name, Hub id or Hub-layout folder")
    parser.add_argument("--ipc", type=int, nargs="+", default=[10], help="images per class of the random subsets")
    parser.add_argument("--arch", nargs="+", default=["convnet3"])
    parser.add_argument("--protocol", default="dsa", choices=sorted(PROTOCOLS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whole_dataset", action="store_true", help="also train on the whole training split")
    parser.add_argument("--whole_epochs", type=int, default=50, help="epochs of the whole-set baseline")
    parser.add_argument("--no_compile", action="store_true", help="skip torch.compile (slower, no warm-up)")
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    args = parser.parse_args()

    data = load_image_classification(args.dataset)
    options = dict(protocol=args.protocol, runs=args.runs, seed=args.seed, compile=not args.no_compile,
                   augmentation=default_augmentation(data.name))
    results = []
    for arch in args.arch:
        for ipc in args.ipc:
            results.append((f"random ipc{ipc}", evaluate_random_subset(data, ipc, arch, epochs=args.epochs,
                                                                         **options)))
        if args.whole_dataset:
            results.append(("whole dataset", evaluate_whole_dataset(data, arch, epochs=args.whole_epochs,
                                                                    **{**options, "runs": 1})))
    for name, result in results:
        if args.json:
            print(json.dumps({"baseline": name, "dataset": data.name, **result.to_dict()}))
        else:
            print(f"{data.name:12s} {name:14s} {result}  runs: {[round(100 * a, 1) for a in result.accuracies]}")


if __name__ == "__main__":
    main()
