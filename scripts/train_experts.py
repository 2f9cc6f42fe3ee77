"""Train expert trajectories for MTT: N networks on the real data, a flat parameter snapshot before training
and after every epoch (MTT's ``buffer.py``: SGD lr 0.01, momentum 0, no weight decay, batch 256, the dataset's
DSA augmentation, constant lr).

    python scripts/train_experts.py --dataset mnist-5k --num_experts 4 --epochs 5
    python scripts/train_experts.py --dataset uoft-cs/cifar10 --num_experts 100 --epochs 50 --zca \\
        --output_dir experts/cifar10-convnet3-zca --push_to_hub me/cifar10-convnet3-zca-experts

The folder (default experts/<dataset>-<arch>[-zca]) holds experts.json, expert-XXXX.safetensors, zca.safetensors
with --zca, and a card. Run the same command again to resume after an interruption: finished experts are kept,
the next one starts over. A recipe names the folder as ``experts: local-dir:FOLDER`` or the pushed repo as
``experts: hf-hub:NAME``. The token for --push_to_hub comes from HF_TOKEN or `hf auth login`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from cmidd_hf.artifacts.experts import ExpertRecipe, push_experts, train_experts
from cmidd_hf.artifacts.resolver import ArtifactError
from cmidd_hf.cli.arguments import add_streaming_arguments, check_can_push
from cmidd_hf.cli.runner import configure_logging
from cmidd_hf.data.errors import DataError
from cmidd_hf.data.loading import load_image_classification
from cmidd_hf.engine.errors import ConfigError

RECIPE_FIELDS = ("arch", "num_experts", "epochs", "lr", "momentum", "weight_decay", "batch_size", "augmentation",
                 "zca", "seed")


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults = ExpertRecipe()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--dataset_config", default=None)
    add_streaming_arguments(parser)
    parser.add_argument("--arch", default=defaults.arch)
    parser.add_argument("--num_experts", type=int, default=defaults.num_experts)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--weight_decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--augmentation", default=defaults.augmentation,
                        help="a DSA strategy, 'none', or 'auto' (the dataset's default)")
    parser.add_argument("--zca", action="store_true", help="train on ZCA-whitened images (kornia, eps 0.1)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="expert k uses seed + k")
    parser.add_argument("--output_dir", type=Path, default=None, help="default: experts/<dataset>-<arch>[-zca]")
    parser.add_argument("--no_compile", action="store_true", help="train eagerly (torch.compile is the default)")
    parser.add_argument("--push_to_hub", default=None, help="push the finished folder as this model repo")
    parser.add_argument("--private", action="store_true")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    """Check everything cheap first (recipe, push rights, data), then train, then push."""
    recipe = ExpertRecipe.from_mapping({name: getattr(args, name) for name in RECIPE_FIELDS})
    if args.push_to_hub:
        check_can_push(args.push_to_hub)
    data = load_image_classification(args.dataset, config_name=args.dataset_config, image_size=args.image_size,
                                     in_memory=args.in_memory, num_workers=args.num_workers)
    folder = args.output_dir or Path("experts") / f"{data.name}-{recipe.arch}{'-zca' if recipe.zca else ''}"
    with logging_redirect_tqdm():  # one line per expert above the bar
        train_experts(recipe, data, folder, args.dataset, compile=not args.no_compile)
    print(f"{recipe.num_experts} experts x {recipe.epochs} epochs -> {folder} (use: experts: local-dir:{folder})")
    if args.push_to_hub:
        commit = push_experts(folder, args.push_to_hub, private=args.private)
        print(f"pushed {folder}: {commit.commit_url} (use: experts: hf-hub:{args.push_to_hub})")
    return folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging()
    try:
        run(args)
    except (ConfigError, DataError, ArtifactError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
