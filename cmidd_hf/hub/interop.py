"""Import and export distilled sets in the formats other dataset-distillation tools use.

* ``.pt`` tensors: DC/DSA/DM save ``{"data": [[images, labels], ...], ...}`` (one pair per experiment), IDC saves
  ``[images, labels]``, MTT saves ``images_best.pt`` and ``labels_best.pt`` separately; DD-Ranking takes a
  class-sorted image tensor. Tensors are normalized (the research repos) or in [0, 1] pixels: the caller says
  which unless the file records it (ours do). Files are read with ``torch.load(weights_only=True)``: no pickle
  code runs.
* image folders: one sub-folder per class with PNG/JPEG images (SRe2L, RethinkDC, DD-Ranking, torchvision
  ``ImageFolder``), read with ``datasets``' ``imagefolder`` builder. Sub-folders map to classes by exact class
  name, else by the number in their name (``003_cat``, ``new003``, ``3``), else by sorted order.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.errors import DataError
from ..data.hub_layout import replace_dir
from ..engine.parametrization import CondensedSet
from .figures import to_uint8_images
from .synthetic_set import SyntheticSet


def _normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    return (pixels - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def export_pt(synthetic: SyntheticSet, path: str | os.PathLike, normalized: bool = True) -> Path:
    """``{"data": [[images, labels]], ...}`` (the DC/DSA/DM layout) plus class names and normalization; for a
    multi-formation set, IDC's ``data.pt`` layout: ``[stored pixels in [0, 1], labels]`` (decode it with the
    set's factor, recorded in its card and in ``condensed.safetensors``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if synthetic.condensed is not None:
        payload = [synthetic.condensed.pixels.clone(), synthetic.condensed.labels.clone()]
    else:
        images = synthetic.images if normalized else synthetic.denormalized()
        payload = {"data": [[images.clone(), synthetic.labels.clone()]], "class_names": list(synthetic.class_names),
                   "mean": list(synthetic.mean), "std": list(synthetic.std), "normalized": normalized}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _pairs_from(obj, experiment: int) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """(images, labels or None, metadata) from any of the known ``.pt`` layouts."""
    if isinstance(obj, torch.Tensor):
        return obj, None, {}
    if isinstance(obj, dict):
        meta = {k: obj[k] for k in ("class_names", "mean", "std", "normalized") if k in obj}
        if "data" in obj:
            runs = obj["data"]
            if not runs:
                raise DataError("the .pt file's 'data' list is empty")
            try:
                images, labels = runs[experiment][:2]
            except IndexError as err:
                raise DataError(f"experiment={experiment} but the file holds {len(runs)} experiment(s)") from err
            return images, labels, meta
        for images_key, labels_key in (("images", "labels"), ("image_syn", "label_syn"), ("x", "y")):
            if images_key in obj:
                return obj[images_key], obj.get(labels_key), meta
        raise DataError(f"unrecognized .pt dict with keys {sorted(obj)}: expected 'data', 'images'/'labels' or "
                        "'image_syn'/'label_syn'")
    if isinstance(obj, (list, tuple)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        return obj[0], obj[1], {}
    raise DataError(f"unrecognized .pt content of type {type(obj).__name__}: expected a tensor, [images, labels] "
                    "or a dict with 'data' / 'images'")


def load_pt(
    path: str | os.PathLike,
    *,
    normalized: bool | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels_path: str | os.PathLike | None = None,
    experiment: int = -1,
    source: str | None = None,
    factor: int = 1,
) -> SyntheticSet:
    """A ``SyntheticSet`` from a ``.pt`` file of one of the research repos' layouts (see the module doc).

    ``normalized``: whether the tensors are normalized with ``mean``/``std`` (True) or [0, 1] pixels (False);
    required unless the file records it. Labels come from the file, ``labels_path``, or — for a bare image
    tensor — the class-sorted layout (equal images per class, class 0 first). ``class_names``/``mean``/``std``
    default to what the file records. ``factor`` > 1: the tensors are multi-formation stored images (IDC's
    ``data.pt`` with ``-f FACTOR``), decoded into factor² images each; the set keeps them as ``condensed``.
    """
    if factor < 1:
        raise DataError(f"factor={factor}: must be >= 1")
    images, labels, meta = _pairs_from(torch.load(path, map_location="cpu", weights_only=True), experiment)
    if labels_path is not None:
        labels = torch.load(labels_path, map_location="cpu", weights_only=True)
    names = list(class_names or meta.get("class_names") or [])
    mean, std = mean or meta.get("mean"), std or meta.get("std")
    normalized = meta.get("normalized") if normalized is None else normalized
    if normalized is None:
        raise DataError(f"{path}: say whether the tensors are normalized (normalized=True, the research repos' "
                        "default) or [0, 1] pixels (normalized=False)")
    if mean is None or std is None:
        raise DataError(f"{path}: pass mean= and std= (the normalization of the real dataset)")
    images = torch.as_tensor(images).float()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if labels is None:
        if not names or len(images) % len(names):
            raise DataError(f"{path} holds {len(images)} images without labels; pass labels_path= or class_names= "
                            "of a class count that divides the image count (class-sorted layout)")
        labels = torch.arange(len(names)).repeat_interleave(len(images) // len(names))
    labels = torch.as_tensor(labels)
    labels = labels.float() if labels.dim() == 2 else labels.long()  # soft labels [N, C] are kept
    if not names:
        names = [str(c) for c in range(labels.shape[1] if labels.dim() == 2 else int(labels.max()) + 1)]
    if factor > 1:
        labels = labels.argmax(dim=1) if labels.dim() == 2 else labels  # condensed sets carry class indices
        order = torch.argsort(labels, stable=True)
        pixels = images[order] if not normalized else images[order] * torch.tensor(std).view(1, -1, 1, 1) + \
            torch.tensor(mean).view(1, -1, 1, 1)
        condensed = CondensedSet(pixels, labels[order], factor)
        decoded, decoded_labels = condensed.decode(mean, std)
        return SyntheticSet(decoded, decoded_labels, names, tuple(mean), tuple(std),
                            {"imported_from": str(path), "parametrization": {"factor": factor}}, source,
                            condensed=condensed)
    if not normalized:
        images = _normalize(images, mean, std)
    return SyntheticSet(images, labels, names, tuple(mean), tuple(std), {"imported_from": str(path)}, source)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "class"


def export_imagefolder(synthetic: SyntheticSet, path: str | os.PathLike) -> Path:
    """``path/<NNN>_<class>/<k>.png``: zero-padded class index first so sorted order is label order."""
    from PIL import Image as PILImage

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        width = max(3, len(str(synthetic.num_classes - 1)))
        arrays = to_uint8_images(synthetic.images, synthetic.mean, synthetic.std)
        counters = [0] * synthetic.num_classes
        for array, label in zip(arrays, synthetic.hard_labels.tolist(), strict=True):
            folder = staging / f"{label:0{width}d}_{_safe(synthetic.class_names[label])}"
            folder.mkdir(exist_ok=True)
            PILImage.fromarray(array).save(folder / f"{counters[label]:05d}.png")
            counters[label] += 1
        replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def export_set(synthetic: SyntheticSet, format: str, path: str | os.PathLike, normalized: bool = True) -> Path:
    """Write ``synthetic`` for other tools: ``"pt"`` (DC/DSA/DM-style ``{'data': [[images, labels]]}``; IDC's
    ``[pixels, labels]`` of the stored images for a multi-formation set) or ``"imagefolder"`` (one sub-folder
    per class, PNGs of the decoded images; DD-Ranking / SRe2L style)."""
    if format == "pt":
        return export_pt(synthetic, path, normalized)
    if format == "imagefolder":
        return export_imagefolder(synthetic, path)
    raise ValueError(f"unknown export format={format!r}; choose 'pt' or 'imagefolder'")


def _class_of(folder_names: list[str], class_names: Sequence[str]) -> dict[str, int]:
    """Folder name -> class index: exact class names, else the number in the name, else sorted order."""
    if set(folder_names) <= set(class_names):
        return {f: list(class_names).index(f) for f in folder_names}
    numbers = [re.search(r"\d+", f) for f in folder_names]
    if all(numbers):
        mapping = {f: int(m.group()) for f, m in zip(folder_names, numbers, strict=True)}
        if len(set(mapping.values())) == len(mapping) and max(mapping.values()) < len(class_names):
            return mapping
    if len(folder_names) == len(class_names):
        return {f: i for i, f in enumerate(sorted(folder_names))}
    raise DataError(f"cannot map {len(folder_names)} class folders {sorted(folder_names)[:5]}... onto "
                    f"{len(class_names)} classes: name them after the classes or number them (003_cat)")


def load_imagefolder(
    path: str | os.PathLike,
    *,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    source: str | None = None,
) -> SyntheticSet:
    """A ``SyntheticSet`` from an image folder (one sub-folder per class), normalized with ``mean``/``std``.

    Images are converted to the channel count of ``mean`` (1: grayscale, 3: RGB).
    """
    from datasets import load_dataset

    path = Path(path)
    folders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{path} has no class sub-folders; expected <folder>/<class>/<image>.png")
    mapping = _class_of(folders, class_names)
    ds = load_dataset("imagefolder", data_dir=str(path), split="train")
    found = ds.features["label"].names
    mode = "L" if len(mean) == 1 else "RGB"
    arrays = np.stack([np.asarray(image.convert(mode)) for image in ds["image"]])
    if arrays.ndim == 3:
        arrays = arrays[..., None]
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255
    labels = torch.tensor([mapping[found[i]] for i in ds.with_format("numpy")["label"][:]], dtype=torch.long)
    order = torch.argsort(labels, stable=True)  # class-sorted, like every distilled set
    return SyntheticSet(_normalize(pixels[order], mean, std), labels[order], list(class_names), tuple(mean),
                        tuple(std), {"imported_from": str(path)}, source)
