"""Pictures of a run: the synthetic set as an image grid, training curves; uint8 rendering of normalized images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch


def to_uint8_images(images: torch.Tensor, mean, std) -> np.ndarray:
    """Normalized [N, C, H, W] floats -> [N, H, W(, C)] uint8 (clipped to the valid pixel range)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (images.detach().float().cpu() * std_t + mean_t).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def save_grid(images: torch.Tensor, labels: torch.Tensor, mean, std, path: str | os.PathLike,
              max_per_class: int = 10) -> Path:
    """One row per class (up to ``max_per_class`` images each, blank cells where a class has fewer), as a PNG."""
    from PIL import Image as PILImage
    from torchvision.utils import make_grid

    labels = labels.cpu()
    classes = torch.unique(labels).tolist()
    shown = max(min(int((labels == c).sum()), max_per_class) for c in classes)
    blank = torch.full_like(images[:1], float("nan"))
    rows = []
    for c in classes:
        members = images[labels == c][:shown]
        rows.append(torch.cat([members, blank.expand(shown - len(members), -1, -1, -1)]))
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    pixels = (torch.cat(rows).detach().float().cpu() * std_t + mean_t).nan_to_num(1.0).clamp(0, 1)
    grid = make_grid(pixels, nrow=shown, padding=2, pad_value=1.0)
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
    return _save_figure(fig, path)


@torch.no_grad()
def proxy_features(proxy: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features of ``images`` (normalized) under a timm-style proxy, in eval mode, on the CPU."""
    was_training = proxy.training
    proxy.eval()
    device = next(proxy.parameters()).device
    features = [proxy.forward_head(proxy.forward_features(images[i:i + batch_size].to(device).float()),
                                   pre_logits=True).float().cpu() for i in range(0, len(images), batch_size)]
    proxy.train(was_training)
    return torch.cat(features)


def plot_tsne(panels: dict[str, tuple[torch.Tensor, torch.Tensor]], real: tuple[torch.Tensor, torch.Tensor],
              proxy: torch.nn.Module, path: str | os.PathLike, class_names: list[str] | None = None,
              seed: int = 0) -> Path:
    """t-SNE of real and synthetic features under ``proxy``, one panel per synthetic set (paper Figs. 1 and 7).

    Each panel embeds the real sample and that set jointly (scikit-learn ``TSNE``, PCA init, fixed
    ``random_state``): small dots are real images, large outlined markers synthetic ones, coloured by class.
    Each title gives the set's class-aware CMI under the proxy (feature space, nats).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from ..cmi.class_aware import class_aware_cmi

    real_images, real_labels = real
    real_features = proxy_features(proxy, real_images)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False)
    cmap = plt.get_cmap("tab10" if int(real_labels.max()) < 10 else "tab20")
    for ax, (title, (images, labels)) in zip(axes[0], panels.items(), strict=True):
        features = proxy_features(proxy, images)
        cmi = float(class_aware_cmi(features, labels.long()))
        joint = torch.cat([real_features, features]).numpy()
        perplexity = min(30.0, (len(joint) - 1) / 3)
        points = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(joint)
        n = len(real_features)
        ax.scatter(points[:n, 0], points[:n, 1], c=[cmap(int(y)) for y in real_labels], s=4, alpha=0.35,
                   linewidths=0)
        ax.scatter(points[n:, 0], points[n:, 1], c=[cmap(int(y)) for y in labels], s=46, edgecolors="black",
                   linewidths=0.8, marker="*")
        ax.set_title(f"{title}\nCMI {cmi:.4f} nats", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if class_names:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=cmap(i), label=name)
                   for i, name in enumerate(class_names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(10, len(class_names)), fontsize=7)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure atomically (temporary file renamed into place) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
