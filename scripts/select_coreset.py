"""Select a coreset baseline (random, herding, k-center, forgetting), evaluate it like a distilled set, save it.

The set is written as one of our Hub-layout folders (``<output_dir>/<dataset>-<method>-ipc<k>``: parquet, card
with a ``distillation:`` block recording the selection and the evaluation results, grid.png), so every table
row — coreset or distilled — is produced, evaluated and shared the same way.

    python scripts/select_coreset.py --dataset fashion-mnist --ipc 10 --method herding --output_dir outputs
    python scripts/select_coreset.py --dataset mnist-5k --ipc 10 --method forgetting --eval_epochs 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cmidd_hf
from cmidd_hf.artifacts.proxies import ProxyError, ProxyPool
from cmidd_hf.data.augment import default_augmentation
from cmidd_hf.data.errors import DataError
from cmidd_hf.data.loading import load_image_classification
from cmidd_hf.engine.precision import PRECISIONS
from cmidd_hf.evaluation.evaluate import evaluate_synthetic
from cmidd_hf.evaluation.protocols import PROTOCOLS
from cmidd_hf.hub.synthetic_set import SyntheticSet
from cmidd_hf.methods.coreset import CORESET_METHODS, select_coreset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="embedded name, fashion-mnist, idx:/folder, Hub id or folder")
    parser.add_argument("--ipc", type=int, required=True)
    parser.add_argument("--method", required=True, choices=CORESET_METHODS)
    parser.add_argument("--output_dir", default="outputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding", default="convnet3",
                        help="architecture of the trained network whose features herding/k-center use")
    parser.add_argument("--embedding_epochs", type=int, default=5, help="its training epochs (trained once, cached)")
    parser.add_argument("--proxy_cache_dir", default="outputs/proxy-cache")
    parser.add_argument("--forgetting_epochs", type=int, default=3, help="epochs of the forgetting run")
    parser.add_argument("--eval_arch", default="convnet3")
    parser.add_argument("--eval_protocol", default="dsa", choices=sorted(PROTOCOLS))
    parser.add_argument("--eval_runs", type=int, default=5)
    parser.add_argument("--eval_epochs", type=int, default=None, help="override the protocol's epochs")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--no_compile", action="store_true")
    args = parser.parse_args(argv)
    for name in ("ipc", "eval_runs", "embedding_epochs", "forgetting_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")

    try:
        data = load_image_classification(args.dataset, seed=args.seed)
        smallest = min(data.train.class_count(c) for c in range(data.num_classes))
        if args.ipc > smallest:
            raise DataError(f"ipc={args.ipc} exceeds the {smallest} training images of the smallest class")
        embedding, provenance = None, None
        if args.method in ("herding", "k-center"):
            spec = {"train": {"arch": args.embedding, "count": 1, "epochs": args.embedding_epochs,
                              "seed": args.seed}}
            pool = ProxyPool.from_pretrained([spec], data, cache_dir=args.proxy_cache_dir, dataset_id=args.dataset)
            embedding, provenance = pool[0], pool.provenance
    except (DataError, ProxyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    positions = select_coreset(data.train, args.ipc, args.method, args.seed, embedding,
                               forgetting_epochs=args.forgetting_epochs)
    images, labels = data.train.images(positions), data.train.labels[positions]
    result = evaluate_synthetic(images, labels, data.test, arch=args.eval_arch, protocol=args.eval_protocol,
                                runs=args.eval_runs, seed=args.seed, epochs=args.eval_epochs,
                                augmentation=default_augmentation(data.name) if args.eval_protocol == "dsa" else None,
                                precision=args.precision, compile=not args.no_compile)
    print(f"{data.name} {args.method} ipc{args.ipc}: {result}")
    selection = {"method": args.method, "seed": args.seed}
    if provenance is not None:
        selection["embedding"] = {"arch": args.embedding, "epochs": args.embedding_epochs, "proxies": provenance}
    if args.method == "forgetting":
        selection["forgetting_epochs"] = args.forgetting_epochs
    distillation = {"method": args.method, "coreset": selection, "ipc": args.ipc, "seed": args.seed,
                    "image_size": list(data.image_shape),
                    "normalization": {"mean": list(data.mean), "std": list(data.std)},
                    "source_positions": [int(p) for p in positions],
                    "library": f"cmidd-hf {cmidd_hf.__version__}", "results": [result.to_dict()]}
    folder = Path(args.output_dir) / f"{data.name}-{args.method}-ipc{args.ipc}"
    SyntheticSet(images, labels, data.class_names, data.mean, data.std, distillation, source=args.dataset,
                 license=data.license).save(folder)
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
