"""t-SNE of real and synthetic features under a proxy, one panel per saved set (paper Figures 1 and 7).

    python scripts/plot_tsne.py outputs/fmnist/dm outputs/fmnist/dm-cmi --titles DM "DM + CMI" \\
        --proxy local-dir:proxies/fashion-mnist-resnet18_cifar/proxy-0 --output tsne.png

Every SET is a folder or Hub repo written by cmidd-hf (decoded images are used for multi-formation sets).
The real sample is ``--real_per_class`` random training images of each class of the sets' source dataset
(or ``--dataset``). Each panel's title gives the set's class-aware CMI under the proxy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cmidd_hf import load_image_classification
from cmidd_hf.artifacts.proxies import ProxyError, ProxyPool
from cmidd_hf.data.errors import DataError
from cmidd_hf.engine.seeding import generator
from cmidd_hf.hub.figures import plot_tsne
from cmidd_hf.hub.synthetic_set import load_synthetic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="+", help="saved sets (folders or Hub repo ids)")
    parser.add_argument("--titles", nargs="*", default=None, help="one title per set (default: the folder names)")
    parser.add_argument("--proxy", required=True, help="the proxy (recipe syntax: local-dir:, hf-hub:, timm name)")
    parser.add_argument("--dataset", default=None, help="real dataset (default: the first set's source)")
    parser.add_argument("--real_per_class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("tsne.png"))
    args = parser.parse_args(argv)
    if args.titles is not None and len(args.titles) != len(args.sets):
        parser.error(f"--titles needs one title per set ({len(args.sets)}), got {len(args.titles)}")
    if args.real_per_class < 1:
        parser.error("--real_per_class must be >= 1")
    try:
        sets = [load_synthetic(s) for s in args.sets]
        dataset = args.dataset or sets[0].source
        if dataset is None:
            raise DataError(f"{args.sets[0]} does not name its source dataset; pass --dataset")
        data = load_image_classification(dataset)
        pool = ProxyPool.from_pretrained([args.proxy], data)
    except (DataError, ProxyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    positions = data.train.balanced_subset(args.real_per_class, generator(args.seed, "tsne-real"))
    real = (data.train.images(positions), data.train.labels[positions])
    titles = args.titles or [Path(s).name for s in args.sets]
    panels = {}
    for title, synthetic in zip(titles, sets, strict=True):
        images = synthetic.renormalized(data.mean, data.std).images
        panels[title] = (images, synthetic.hard_labels)
    with torch.no_grad():
        path = plot_tsne(panels, real, pool[0], args.output, class_names=data.class_names, seed=args.seed)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
