"""The dataset card of a distilled set: plain-YAML metadata, one ``distillation:`` block per config, a body.

The YAML holds the Hub's dataset-card fields (license inherited from the source, task, tags, source dataset,
size, pretty name) and ``distillation: {<config>: {...}}``: method, regularizer (λ, space, normalization,
proxies with repo ids and revisions), IPC, iterations, seed, image size, normalization, library version and
``results`` / ``baselines`` per architecture and protocol. The markdown body is rendered from that YAML alone,
so merging a second config into an existing card (another IPC in the same repo) re-renders a body that covers
both. Every value is converted to plain Python first: the Hub rejects numpy scalars and tuples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import DatasetCard, DatasetCardData

from ..data.loading import canonical_dataset
from ..engine.run_folder import GRID

BIBTEX = {
    "cmidd": """@inproceedings{cmidd2025,
  title     = {Going Beyond Feature Similarity: Effective Dataset Distillation based on Class-Aware
               Conditional Mutual Information},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025},
  url       = {https://github.com/ndhg1213/CMIDD}
}""",
    "dm": """@inproceedings{zhao2023dm,
  title     = {Dataset Condensation with Distribution Matching},
  author    = {Zhao, Bo and Bilen, Hakan},
  booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2023}
}""",
    "dc": """@inproceedings{zhao2021dc,
  title     = {Dataset Condensation with Gradient Matching},
  author    = {Zhao, Bo and Mopuri, Konda Reddy and Bilen, Hakan},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2021}
}""",
    "dsa": """@inproceedings{zhao2021dsa,
  title     = {Dataset Condensation with Differentiable Siamese Augmentation},
  author    = {Zhao, Bo and Bilen, Hakan},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2021}
}""",
    "mnist": """@article{lecun1998mnist,
  title   = {Gradient-Based Learning Applied to Document Recognition},
  author  = {LeCun, Yann and Bottou, L{\\'e}on and Bengio, Yoshua and Haffner, Patrick},
  journal = {Proceedings of the IEEE},
  year    = {1998}
}""",
    "fashion_mnist": """@article{xiao2017fashionmnist,
  title   = {Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms},
  author  = {Xiao, Han and Rasul, Kashif and Vollgraf, Roland},
  journal = {arXiv preprint arXiv:1708.07747},
  year    = {2017}
}""",
    "cifar": """@techreport{krizhevsky2009cifar,
  title       = {Learning Multiple Layers of Features from Tiny Images},
  author      = {Krizhevsky, Alex},
  institution = {University of Toronto},
  year        = {2009}
}""",
    "svhn": """@inproceedings{netzer2011svhn,
  title     = {Reading Digits in Natural Images with Unsupervised Feature Learning},
  author    = {Netzer, Yuval and Wang, Tao and Coates, Adam and Bissacco, Alessandro and Wu, Bo and Ng, Andrew Y.},
  booktitle = {NIPS Workshop on Deep Learning and Unsupervised Feature Learning},
  year      = {2011}
}""",
    "tiny_imagenet": """@techreport{le2015tinyimagenet,
  title       = {Tiny ImageNet Visual Recognition Challenge},
  author      = {Le, Ya and Yang, Xuan},
  institution = {Stanford CS231N},
  year        = {2015}
}""",
}
_DATASET_BIBTEX = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar", "cifar100": "cifar",
                   "svhn": "svhn", "tiny_imagenet": "tiny_imagenet"}
KNOWN_LICENSES = {"mnist": "cc-by-sa-3.0", "fashion_mnist": "mit"}


def plain(value):
    """Numpy/torch scalars, tuples and paths -> plain Python, so card YAML stays loadable by the Hub. Floats keep
    6 significant digits (not 6 decimals: MTT's lr_lr 1e-7 must not read 0.0)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return plain(value.item() if value.ndim == 0 else value.tolist())
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else str(value)
    if isinstance(value, Path):
        return str(value)
    return value


SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"))


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows."""
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), SIZE_CATEGORIES[-1][1])


def asset_prefix(config_name: str) -> str:
    """Where a config's grid and run files live in the repo: the root for "default", else its data folder."""
    return "" if config_name == "default" else f"{config_name}/"


def data_dir(config_name: str) -> str:
    """``push_to_hub``'s rule: "data" for the default config, the config name otherwise."""
    return "data" if config_name == "default" else config_name


def _pretty_name(source: str, block: Mapping) -> str:
    name = source.rstrip("/").split("/")[-1]
    method = str(block.get("method", "synthetic")).upper()
    return f"{name} distilled ({method}{'+CMI' if block.get('regularizer') else ''})"


def build_card_data(
    existing: DatasetCardData | None,
    config_name: str,
    block: Mapping,
    source: str | None,
    license: str | None,
    num_rows: int,
) -> DatasetCardData:
    """Card metadata for ``config_name`` merged into ``existing`` (other configs' blocks are kept)."""
    data = existing.to_dict() if existing is not None else {}
    blocks = dict(data.get("distillation") or {})
    blocks[config_name] = plain(block)
    canonical = canonical_dataset(source) if source else None
    sources = list(data.get("source_datasets") or [])
    if source and source not in sources:
        sources.append(source)
    sizes = [size_category(num_rows)] + list(data.get("size_categories") or [])
    order = [name for _, name in SIZE_CATEGORIES]
    tags = list(data.get("tags") or [])
    tags += [t for t in ("dataset-distillation", "synthetic", "cmidd-hf") if t not in tags]
    data.update(
        license=data.get("license") or license or KNOWN_LICENSES.get(canonical or "", "other"),
        pretty_name=data.get("pretty_name") or _pretty_name(source or "synthetic", block),
        task_categories=["image-classification"],
        tags=tags,
        source_datasets=sources or None,
        size_categories=[max(sizes, key=order.index)],
        distillation=blocks,
    )
    return DatasetCardData(**{k: v for k, v in data.items() if v is not None})


def results_table(rows: list[tuple[str, Mapping]], kind: str) -> str:
    lines = ["| config | trained on | architecture | protocol | epochs | runs | accuracy (%) | per run (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for config, r in rows:
        runs = ", ".join(f"{100 * a:.1f}" for a in r["accuracies"])
        lines.append(f"| {config} | {r.get('kind', kind)} | {r['arch']} | {r['protocol']} | {r['epochs']} | "
                     f"{r['runs']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {runs} |")
    return "\n".join(lines)


def _describe(config: str, block: Mapping) -> str:
    method = str(block.get("method", "?")).upper()
    reg = block.get("regularizer")
    if reg:
        proxies = reg.get("proxies") or []
        method += (f" + λ·CMI (λ = {reg.get('weight')}, {reg.get('space')} space, {reg.get('normalization')} "
                   f"normalization, {len(proxies)} prox{'y' if len(proxies) == 1 else 'ies'})")
    parts = [f"{block['ipc']} images per class" if block.get("ipc") else "unequal images per class", method]
    parts += [f"{block[key]} {text}" for key, text in (("iterations", "iterations"),) if key in block]
    parts += [f"{text} {block[key]}" for key, text in (("seed", "seed"), ("image_size", "images")) if key in block]
    if isinstance(block.get("final_cmi"), float):
        initial = block.get("initial_cmi")
        parts.append(f"class-aware CMI of the set {block['final_cmi']:.4f} nats"
                     + (f" (initial set: {initial:.4f})" if isinstance(initial, float) else ""))
    if block.get("imported_from"):
        parts.append(f"imported from `{block['imported_from']}`")
    return f"- `{config}`: " + ", ".join(parts)


def dd_ranking_table(rows: list[tuple[str, dict]]) -> str:
    """DD-Ranking's scores (IOR: gain over a random real subset under the same relabelling; HLR: gap to the whole
    training set with hard labels), one row per config and architecture."""
    lines = ["DD-Ranking scores (points; IOR higher is better, HLR lower is better):", "",
             "| config | architecture | IOR | HLR | whole set (hard labels) |", "|---|---|---|---|---|"]
    for config, r in rows:
        lines.append(f"| {config} | {r['arch']} | {r['improvement_over_random']:+.2f} ± "
                     f"{r['improvement_over_random_std']:.2f} ({r['soft_protocol']}) | {r['hard_label_recovery']:.2f} "
                     f"± {r['hard_label_recovery_std']:.2f} ({r['hard_protocol']}) | {r['full_accuracy']:.2f} % "
                     f"({r['full_source']}) |")
    return "\n".join(lines)


def card_body(card_data: DatasetCardData, repo_id: str | None = None) -> str:
    """The markdown body, rendered from the card's YAML (all configs)."""
    blocks: dict = card_data.to_dict().get("distillation") or {}
    sources = card_data.source_datasets or ["the source dataset"]
    source = sources[0]
    name = repo_id or "<this repo or folder>"
    results = [(c, r) for c, b in blocks.items() for r in b.get("results") or []]
    baselines = [(c, r) for c, b in blocks.items() for r in b.get("baselines") or []]
    table = results_table(results, "distilled set") if results else "_No evaluation recorded yet._"
    if baselines:
        table += "\n\nBaselines (real images, same protocol):\n\n" + results_table(baselines, "real images")
    ranking = [(c, r) for c, b in blocks.items() for r in b.get("dd_ranking") or []]
    if ranking:
        table += "\n\n" + dd_ranking_table(ranking)
    grids = "\n".join(f"![{c}: synthetic images, one row per class]({asset_prefix(c)}{GRID})" for c in blocks)
    first = next(iter(blocks), "default")
    config_arg = "" if first == "default" else f", config={first!r}"
    norm = blocks.get(first, {}).get("normalization", {})
    methods = {str(b.get("method", "")).lower() for b in blocks.values()}
    canonical = canonical_dataset(source)
    citations = [BIBTEX["cmidd"], *(BIBTEX[m] for m in sorted(methods) if m in BIBTEX)]
    if canonical in _DATASET_BIBTEX:
        citations.append(BIBTEX[_DATASET_BIBTEX[canonical]])
    return f"""# {card_data.pretty_name}

A distilled version of `{source}`, written by `cmidd-hf` (dataset distillation with the class-aware CMI
regularizer of [CMIDD](https://github.com/ndhg1213/CMIDD)): a few synthetic images per class on which freshly
trained networks reach the accuracy below.

{chr(10).join(_describe(c, b) for c, b in blocks.items())}

## Results

Fresh networks trained only on this set, tested on the `{source}` test split (last-epoch accuracy, mean ± std
over runs):

{table}

{grids}

## Use

```python
import cmidd_hf

syn = cmidd_hf.load_synthetic("{name}"{config_arg})  # exact float tensors, labels, class names, card
real = cmidd_hf.load_image_classification("{source}")
result = cmidd_hf.evaluate_synthetic(syn.images, syn.labels, real.test, arch="convnet3", runs=5)
print(result)
```

Without cmidd-hf: `datasets.load_dataset("{name}", split="train")` gives `image` (PNG, de-normalized and
clipped), `label` and `pixel_values` — the exact optimized tensor in normalized space (mean
{norm.get('mean')}, std {norm.get('std')}). From a local folder add `download_mode="force_redownload"`: `datasets`
caches a folder by its name, so another folder of the same name would be read instead. Re-evaluate and record new
results with
`python scripts/evaluate_synthetic.py {name} --arch convnet3 alexnet_cifar --update-card`.

## Citation

```bibtex
{chr(10).join(citations)}
```
"""


def render_card(card_data: DatasetCardData, repo_id: str | None = None) -> DatasetCard:
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{card_body(card_data, repo_id)}")
