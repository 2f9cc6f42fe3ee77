"""Pre-train K proxy networks for the CMI term and save each in timm Hub format.

Defaults follow the official recipe (method-spec §2): ResNet-18 with instance norm, SGD lr 0.01 (constant),
momentum 0.9, weight decay 1e-3, batch 256, 40 epochs, no augmentation, distinct seeds.

    python scripts/pretrain_proxies.py --dataset mnist-5k --arch convnet3 --count 2 --epochs 8
    python scripts/pretrain_proxies.py --dataset uoft-cs/cifar10 --count 4 --output_dir proxies/cifar10
    python scripts/pretrain_proxies.py --dataset uoft-cs/cifar10 --count 4 --push_to_hub me/cifar10-resnet18-cifar-proxy

Each proxy lands in OUTPUT_DIR/proxy-<k>/ (config.json, model.safetensors, README.md with model-index,
training.json); with --push_to_hub NAME they are pushed as NAME-<k> timm model repos.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmidd_hf.data import load_image_classification
from cmidd_hf.proxies import ProxyTrainingSpec, save_proxy, train_proxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--dataset_config", default=None)
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

    spec = ProxyTrainingSpec.from_mapping({k: getattr(args, k) for k in (
        "arch", "count", "epochs", "lr", "momentum", "weight_decay", "batch_size", "seed")})
    data = load_image_classification(args.dataset, config_name=args.dataset_config)
    out_root = args.output_dir or Path("proxies") / f"{data.name}-{args.arch}"
    for index in range(spec.count):
        model, accuracy = train_proxy(spec, data, index)
        folder = save_proxy(model, out_root / f"proxy-{index}", data, spec, index, accuracy, args.dataset)
        print(f"proxy {index}: test accuracy {100 * accuracy:.2f} % -> {folder}")
        if args.push_to_hub:
            from huggingface_hub import HfApi

            repo_id = f"{args.push_to_hub}-{index}"
            api = HfApi()
            api.create_repo(repo_id, repo_type="model", private=args.private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                              commit_message=f"Upload {args.arch} proxy {index}")
            print(f"pushed {folder} to https://huggingface.co/{repo_id}")


if __name__ == "__main__":
    main()
