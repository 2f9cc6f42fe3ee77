"""MNIST-format (IDX) folders as Hub-layout datasets: Fashion-MNIST offline, and ``idx:/folder`` for any other.

A folder holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``
and ``t10k-labels-idx1-ubyte[.gz]`` (MNIST, Fashion-MNIST, KMNIST, EMNIST) is converted once into a Hub-layout
parquet dataset under the cache (``$HF_HOME/cmidd_hf/idx/<name>-<digest>``), so later runs read parquet instead of
decoding 70,000 images again. ``fashion-mnist`` resolves to the Hub dataset ``zalando-datasets/fashion_mnist``
when it is reachable or cached, else to the Debian package's IDX files (``apt-get install
dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from .errors import DataError

FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: the ClassLabel names of zalando-datasets/fashion_mnist, so both sources give the same class names
FASHION_MNIST_CLASSES = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(DataError):
    """An IDX folder or file that cannot be read."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array of one IDX file (gzip or plain): magic ``0 0 <type> <ndim>``, big-endian dims, then data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise IDXError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise IDXError(f"{path}: header says {dims} ({expected} bytes) but the file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise IDXError(f"{folder} has no {stem}[.gz]; an IDX folder holds train-/t10k- images-idx3 and labels-idx1 "
                   "files")


def idx_splits(folder: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images [N, H, W] uint8, labels [N] int64)} of an IDX folder."""
    folder = Path(folder)
    splits = {}
    for split, (images_stem, labels_stem) in SPLIT_FILES.items():
        images, labels = read_idx(_find(folder, images_stem)), read_idx(_find(folder, labels_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise IDXError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
        splits[split] = (images.astype(np.uint8), labels.astype(np.int64))
    return splits


def cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "cmidd_hf" / "idx"


def _digest(folder: Path) -> str:
    """Changes when any IDX file of the folder changes (name, size, modification time)."""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if "idx" in path.name:
            stat = path.stat()
            h.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def idx_to_hub_layout(
    folder: str | os.PathLike,
    name: str | None = None,
    class_names: list[str] | None = None,
    license: str | None = None,
    source_dataset: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Convert an IDX folder once into a Hub-layout parquet dataset in the cache; returns that folder."""
    from datasets import ClassLabel, Dataset, Features, Image
    from huggingface_hub import DatasetCard, DatasetCardData

    from .hub_layout import write_hub_dataset

    folder = Path(folder)
    if not folder.is_dir():
        raise IDXError(f"idx folder {folder} does not exist")
    name = name or folder.name
    out = Path(cache_dir or cache_root()) / f"{name}-{_digest(folder)}"
    if (out / "README.md").is_file():
        return out
    splits = idx_splits(folder)
    num_classes = int(max(int(labels.max()) for _, labels in splits.values())) + 1
    names = class_names or [str(c) for c in range(num_classes)]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    datasets = {split: Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)
                for split, (images, labels) in splits.items()}
    card = DatasetCardData(license=license, pretty_name=name, task_categories=["image-classification"],
                           source_datasets=[source_dataset] if source_dataset else None)
    body = (f"# {name}\n\nConverted by cmidd-hf from the IDX files in `{folder}` "
            f"({', '.join(f'{s}: {len(d)}' for s, d in datasets.items())} images).\n")
    write_hub_dataset(datasets, out, card, lambda data: DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
    return out


def fashion_mnist_folder(idx_folder: str | os.PathLike | None = None) -> Path:
    """Fashion-MNIST as a Hub-layout folder: the Hub dataset if reachable or cached, else the IDX files
    (``idx_folder``, default the Debian package's)."""
    idx_folder = Path(idx_folder or DEBIAN_FASHION_MNIST)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(FASHION_MNIST_HUB_ID, repo_type="dataset"))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as hub_error:  # offline or not cached: IDX files
        if not Path(idx_folder).is_dir():
            raise IDXError(
                f"fashion-mnist: {FASHION_MNIST_HUB_ID} is neither reachable nor in the Hub cache "
                f"({type(hub_error).__name__}) and {idx_folder} does not exist; run `apt-get install "
                "dataset-fashion-mnist` (Debian/Ubuntu) or pass --dataset idx:/folder/with/the/idx/files"
            ) from None
    return idx_to_hub_layout(idx_folder, name="fashion-mnist", class_names=FASHION_MNIST_CLASSES, license="mit",
                             source_dataset=FASHION_MNIST_HUB_ID)
