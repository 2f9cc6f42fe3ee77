"""What a distillation run leaves behind: a Hub-layout dataset folder with its card, image grid and plots.

The folder loads with ``datasets.load_dataset(folder)``: an ``image`` PNG column (de-normalized, clipped), a
``label`` ClassLabel column and a ``pixel_values`` float32 column holding the exact optimized tensor
(normalized space). The card's YAML carries a ``distillation:`` block with provenance and results.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from datasets import Array3D, ClassLabel, Dataset, Features, Image
from huggingface_hub import DatasetCardData

from .hub_layout import write_hub_dataset

LICENSES = {"mnist": "cc-by-sa-3.0", "mnist-5k": "cc-by-sa-3.0", "fashion_mnist": "mit"}


def to_uint8_images(images: torch.Tensor, mean, std) -> np.ndarray:
    """Normalized [N, C, H, W] floats -> [N, H, W(, C)] uint8 (clipped to the valid pixel range)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (images.detach().float().cpu() * std_t + mean_t).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def save_grid(images: torch.Tensor, ipc: int, mean, std, path: str | os.PathLike, max_per_class: int = 10) -> Path:
    """One row per class, up to ``max_per_class`` images each, as a PNG."""
    from PIL import Image as PILImage
    from torchvision.utils import make_grid

    num_classes = len(images) // ipc
    shown = min(ipc, max_per_class)
    rows = torch.cat([images[c * ipc:c * ipc + shown] for c in range(num_classes)])
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    grid = make_grid((rows.detach().cpu() * std_t + mean_t).clamp(0, 1), nrow=shown, padding=2, pad_value=1.0)
    array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    scale = max(1, 256 // max(array.shape[0], 1))
    image = PILImage.fromarray(array)
    if scale > 1:
        image = image.resize((array.shape[1] * scale, array.shape[0] * scale), PILImage.NEAREST)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    image.save(tmp)
    os.replace(tmp, path)
    return path


def plot_curves(metrics_path: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """Matching loss, CMI and accuracy over steps, from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    steps = [r for r in records if "matching_loss" in r]
    evals = [r for r in records if r.get("event") == "evaluation"]
    if not steps and not evals:
        return None
    panels = [("matching loss", [(r["step"], r["matching_loss"]) for r in steps])]
    if any("cmi" in r for r in steps):
        panels.append(("CMI (nats)", [(r["step"], r["cmi"]) for r in steps if "cmi" in r]))
    acc_keys = sorted({k for r in evals for k in r if k.startswith("accuracy/")})
    fig, axes = plt.subplots(1, len(panels) + bool(acc_keys), figsize=(4.5 * (len(panels) + bool(acc_keys)), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (title, points) in zip(axes, panels, strict=False):
        if points:
            ax.plot(*zip(*points, strict=True), lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("step")
        if title.startswith("matching") and points and min(p[1] for p in points) > 0:
            ax.set_yscale("log")
    if acc_keys:
        ax = axes[-1]
        for key in acc_keys:
            points = [(r["step"], 100 * r[key]) for r in evals if key in r]
            ax.plot(*zip(*points, strict=True), marker="o", label=key.split("/", 1)[1])
        ax.set_title("test accuracy (%)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plain(value):
    """Numpy/torch scalars, tuples and paths -> plain Python, so card YAML stays loadable by the Hub."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        return plain(value.item() if value.ndim == 0 else value.tolist())
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


def results_table(results: list[dict]) -> str:
    lines = ["| architecture | protocol | epochs | runs | accuracy (%) | per run (%) |", "|---|---|---|---|---|---|"]
    for r in results:
        runs = ", ".join(f"{100 * a:.1f}" for a in r["accuracies"])
        lines.append(f"| {r['arch']} | {r['protocol']} | {r['epochs']} | {r['runs']} | "
                     f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {runs} |")
    return "\n".join(lines)


def card_body(pretty_name: str, distillation: dict, source: str) -> str:
    method = distillation["method"].upper()
    reg = distillation.get("regularizer")
    reg_text = (f" + λ·CMI (λ = {reg['weight']}, {reg['space']} space, {reg['normalization']} normalization, "
                f"{len(reg['proxies'])} proxies)") if reg else ""
    results = distillation.get("results") or []
    table = results_table(results) if results else "_No evaluation was run._"
    return f"""# {pretty_name}

A distilled version of `{source}`: {distillation['ipc']} synthetic images per class, made with
{method}{reg_text} for {distillation['iterations']} iterations (seed {distillation['seed']}) by `cmidd-hf`.

## Results

Fresh networks trained only on this set, tested on the `{source}` test split (last-epoch accuracy,
mean ± std over runs):

{table}

![synthetic images, one row per class](grid.png)

## Use

```python
from datasets import load_dataset
ds = load_dataset("<this repo or folder>", split="train")   # columns: image (PNG), label, pixel_values
```

`pixel_values` is the exact optimized tensor in normalized space (mean {distillation['normalization']['mean']},
std {distillation['normalization']['std']}); `image` is its de-normalized, clipped PNG rendering. To train on
it with the same protocol: `cmidd_hf.evaluate_synthetic(images, labels, test_store, arch="convnet3")`.

## Citation

CMIDD: *Going Beyond Feature Similarity: Effective Dataset Distillation based on Class-Aware Conditional
Mutual Information*, ICLR 2025. DM: Zhao & Bilen, *Dataset Condensation with Distribution Matching*, WACV 2023.
Source data: `{source}` (see its card for license and citation).
"""


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    mean,
    std,
    distillation: dict,
    source: str,
    license: str | None = None,
) -> Path:
    """Write ``out_dir/data/train-*.parquet``, ``README.md`` (card) and ``grid.png``; other files are kept."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c, h, w = images.shape[1:]
    features = Features({"image": Image(), "label": ClassLabel(names=list(class_names)),
                         "pixel_values": Array3D((c, h, w), "float32")})
    ds = Dataset.from_dict({"image": list(to_uint8_images(images, mean, std)), "label": labels.tolist(),
                            "pixel_values": images.detach().float().cpu().numpy()}, features=features)
    ipc = int(distillation["ipc"])
    save_grid(images, ipc, mean, std, out_dir / "grid.png")
    dataset_name = source.rstrip("/").split("/")[-1]
    pretty = f"{dataset_name} distilled ({distillation['method'].upper()}"
    pretty += f"+CMI, IPC {ipc})" if distillation.get("regularizer") else f", IPC {ipc})"
    card = DatasetCardData(
        license=license or LICENSES.get(dataset_name.lower(), "other"),
        pretty_name=pretty,
        task_categories=["image-classification"],
        tags=["dataset-distillation", "synthetic", "cmidd-hf"],
        source_datasets=[source],
        size_categories=[_size_category(len(ds))],
        distillation=plain(distillation),
    )
    return write_hub_dataset({"train": ds}, out_dir, card, card_body(pretty, plain(distillation), source),
                             replace_folder=False)
