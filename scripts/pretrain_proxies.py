"""Pre-train K proxy networks for the CMI term and save each in timm Hub format.

Defaults follow the official recipe (method-spec §2): ResNet-18 with instance norm, SGD lr 0.01 (constant),
momentum 0.9, weight decay 1e-3, batch 256, 40 epochs, no augmentation, distinct seeds.

    python scripts/pretrain_proxies.py --dataset mnist-5k --arch convnet3 --count 2 --epochs 8
    python scripts/pretrain_proxies.py --dataset uoft-cs/cifar10 --count 4 --output_dir proxies/cifar10
    python scripts/pretrain_proxies.py --dataset uoft-cs/cifar10 --count 4 --push_to_hub me/cifar10-resnet18-cifar-proxy

Each proxy lands in OUTPUT_DIR/proxy-<k>/ (config.json, model.safetensors, README.md with model-index and the
training recipe); with --push_to_hub NAME they are pushed as the timm model repos NAME-0 ... NAME-<K-1>, which a
recipe names as one entry: proxies: ["hf-hub:NAME-{0..K-1}"]. The token comes from HF_TOKEN or `hf auth login`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from cmidd_hf.artifacts.proxies import ProxyTrainingSpec, push_proxy, save_proxy, train_proxy
from cmidd_hf.cli.arguments import add_streaming_arguments, check_can_push
from cmidd_hf.cli.runner import configure_logging
from cmidd_hf.data.errors import DataError
from cmidd_hf.data.loading import load_image_classification
from cmidd_hf.engine.errors import ConfigError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--dataset_config", default=None)
    add_streaming_arguments(parser)
    parser.add_argument("--arch", default=ProxyTrainingSpec.arch)
    parser.add_argument("--count", type=int, default=ProxyTrainingSpec.count)
    parser.add_argument("--epochs", type=int, default=ProxyTrainingSpec.epochs)
    parser.add_argument("--lr", type=float, default=ProxyTrainingSpec.lr)
    parser.add_argument("--momentum", type=float, default=ProxyTrainingSpec.momentum)
    parser.add_argument("--weight_decay", type=float, default=ProxyTrainingSpec.weight_decay)
    parser.add_argument("--batch_size", type=int, default=ProxyTrainingSpec.batch_size)
    parser.add_argument("--seed", type=int, default=0, help="proxy k uses seed + k")
    parser.add_argument("--output_dir", type=Path, default=None, help="default: proxies/<dataset>-<arch>")
    parser.add_argument("--push_to_hub", default=None, help="push proxy k to the model repo <NAME>-<k>")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args()
    if args.push_to_hub:  # fail before training, not after
        try:
            check_can_push(args.push_to_hub)
        except ConfigError as err:
            parser.error(str(err))

    spec = ProxyTrainingSpec.from_mapping({k: getattr(args, k) for k in (
        "arch", "count", "epochs", "lr", "momentum", "weight_decay", "batch_size", "seed")})
    configure_logging()
    try:
        data = load_image_classification(args.dataset, config_name=args.dataset_config, image_size=args.image_size,
                                         in_memory=args.in_memory, num_workers=args.num_workers)
    except DataError as err:
        parser.error(str(err))
    out_root = args.output_dir or Path("proxies") / f"{data.name}-{args.arch}"
    for index in range(spec.count):
        with logging_redirect_tqdm():  # epoch lines above the bar, not glued to it
            model, accuracy = train_proxy(spec, data, index, log_epochs=True)
        folder = save_proxy(model, out_root / f"proxy-{index}", data, spec, index, accuracy, args.dataset)
        print(f"proxy {index}: test accuracy {100 * accuracy:.2f} % -> {folder}")
        if args.push_to_hub:
            commit = push_proxy(folder, f"{args.push_to_hub}-{index}", private=args.private)
            print(f"pushed {folder}: {commit.commit_url}")
    if args.push_to_hub:
        print(f'use them in a recipe as: proxies: ["hf-hub:{args.push_to_hub}-{{0..{spec.count - 1}}}"]')


if __name__ == "__main__":
    main()
