"""Real image-classification data from Hugging Face ``datasets``, as class-indexed uint8 stores.

``load_image_classification`` accepts an embedded dataset name (``"mnist-5k"``), ``"fashion-mnist"``, an IDX
folder as ``"idx:/path"`` (MNIST format, converted once, see :mod:`cmidd_hf.data.idx`), a local folder in Hub
layout, a Hub dataset id (resolved with ``snapshot_download`` so the Hub cache also works offline), or a
``Dataset`` / ``DatasetDict``. Image and label columns are found by feature type. Images are kept as uint8
and normalized on the fly; ``in_memory=False`` keeps them in Arrow and decodes on demand (ImageNet scale).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image, Value
from PIL import Image as PILImage

from .errors import DataError
from .hub_layout import load_folder

EMBEDDED_DIR = Path(__file__).parent / "embedded"
EMBEDDED_DATASETS = ("mnist-5k",)
#: names that load Fashion-MNIST from the Hub (zalando-datasets/fashion_mnist) or, offline, from its IDX files
FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist")

# Per-channel mean/std used by DC/DSA/DM/IDC and the proxy pre-training (method-spec §7).
KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_ALIASES = {
    "mnist": "mnist", "mnist-5k": "mnist", "mnist_5k": "mnist",
    "fashion_mnist": "fashion_mnist", "fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
    "svhn": "svhn",
    "cifar10": "cifar10", "cifar-10": "cifar10",
    "cifar100": "cifar100", "cifar-100": "cifar100",
    "tiny-imagenet": "tiny_imagenet", "tiny_imagenet": "tiny_imagenet", "tinyimagenet": "tiny_imagenet",
    "tiny-imagenet-200": "tiny_imagenet",
    "imagenet-1k": "imagenet", "imagenet_1k": "imagenet", "imagenet": "imagenet", "ilsvrc2012": "imagenet",
}
_LABEL_NAME_PREFERENCE = ("label", "labels", "fine_label")


def canonical_dataset(name: str) -> str | None:
    """The canonical key (``cifar10``, ``mnist``, ...) of a dataset name, Hub id or folder, if it is known."""
    return _ALIASES.get(str(name).rstrip("/").split("/")[-1].lower())


def known_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The standard normalization of a dataset, keyed by its name or Hub id (``uoft-cs/cifar10``)."""
    canonical = canonical_dataset(name)
    return KNOWN_STATS[canonical] if canonical else None


# --------------------------------------------------------------------------------------------- sources


def resolve_dataset(
    source: str | os.PathLike | Dataset | DatasetDict, config_name: str | None = None
) -> tuple[DatasetDict, Path | None]:
    """Open ``source`` as a ``DatasetDict`` (embedded name, local folder, Hub id, or dataset object).

    Also returns the local folder it was read from (the Hub snapshot for Hub ids), where its card lives.
    """
    if isinstance(source, DatasetDict):
        return source, None
    if isinstance(source, Dataset):
        return DatasetDict({str(source.split or "train"): source}), None
    source = str(source)
    if source in EMBEDDED_DATASETS:
        return load_folder(EMBEDDED_DIR / source), EMBEDDED_DIR / source
    if source in FASHION_MNIST_NAMES or source.startswith("idx:"):
        from .idx import fashion_mnist_folder, idx_to_hub_layout  # idx builds on this module

        folder = fashion_mnist_folder() if source in FASHION_MNIST_NAMES else idx_to_hub_layout(source[4:])
        return _load_folder(str(folder), config_name), folder
    if os.path.isdir(source):
        return _load_folder(source, config_name), Path(source)
    if os.path.exists(source):
        raise DataError(f"dataset={source!r} is a file; pass a folder in Hub layout or a Hub dataset id")
    if source.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(source):
        raise DataError(f"dataset={source!r}: no such folder; give an existing folder in Hub layout, an embedded "
                        f"dataset {list(EMBEDDED_DATASETS)} or a Hub id 'org/name'")
    if source.count("/") != 1:
        raise DataError(
            f"unknown dataset={source!r}: not an embedded dataset {list(EMBEDDED_DATASETS)}, not an existing "
            "folder, and not a Hub id of the form 'org/name'"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        local = snapshot_download(source, repo_type="dataset")
    except HFValidationError as err:
        raise DataError(f"dataset={source!r} is neither an existing folder nor a valid Hub id ({err})") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise DataError(
            f"dataset={source!r} could not be fetched from the Hugging Face Hub or found in the Hub cache "
            f"({type(err).__name__}). Check the id, your network, or HF_HUB_OFFLINE."
        ) from err
    return _load_folder(local, config_name), Path(local)


def _load_folder(folder: str, config_name: str | None) -> DatasetDict:
    """:func:`load_folder` of a local folder; a folder it cannot read is a one-line DataError."""
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

    try:
        return load_folder(folder, name=config_name)
    except (DataFilesNotFoundError, DatasetNotFoundError, FileNotFoundError, ValueError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"dataset={folder!r} cannot be read as a Hub-layout dataset: {message}") from None


def card_license(folder: Path | None, dsd: DatasetDict) -> str | None:
    """The license a dataset declares: its README card's ``license``, else the ``DatasetInfo``'s."""
    if folder is not None and (folder / "README.md").is_file():
        from huggingface_hub import DatasetCard

        declared = DatasetCard.load(folder / "README.md").data.license
        if declared:
            return declared if isinstance(declared, str) else ",".join(declared)
    infos = [ds.info.license for ds in dsd.values() if ds.info.license]
    return infos[0] if infos else None


def find_columns(features, image_column: str | None = None, label_column: str | None = None) -> tuple[str, str]:
    """The image and label column names, by feature type unless given."""
    columns = list(features)
    if image_column is not None:
        if image_column not in features:
            raise DataError(f"image_column={image_column!r} is not a column; columns are {columns}")
    else:
        images = [k for k, f in features.items() if isinstance(f, Image)]
        if not images:
            raise DataError(f"no image column: none of {columns} is an Image feature; pass image_column=NAME")
        if len(images) > 1:
            raise DataError(f"several image columns {images}; choose one with image_column=NAME")
        image_column = images[0]
    if label_column is not None:
        if label_column not in features:
            raise DataError(f"label_column={label_column!r} is not a column; columns are {columns}")
        feature = features[label_column]
        if not (isinstance(feature, ClassLabel) or (isinstance(feature, Value) and "int" in feature.dtype)):
            raise DataError(f"label_column={label_column!r} has type {feature}; it must be a ClassLabel or integer")
        return image_column, label_column
    labels = [k for k, f in features.items() if isinstance(f, ClassLabel)]
    if not labels:
        ints = [k for k, f in features.items()
                if isinstance(f, Value) and "int" in f.dtype and k in ("label", "labels")]
        if ints:
            return image_column, ints[0]
        raise DataError(f"no label column: none of {columns} is a ClassLabel feature; pass label_column=NAME")
    if len(labels) > 1:
        preferred = [name for name in _LABEL_NAME_PREFERENCE if name in labels]
        if not preferred:
            raise DataError(f"several label columns {labels}; choose one with label_column=NAME")
        return image_column, preferred[0]
    return image_column, labels[0]


# --------------------------------------------------------------------------------------------- decoding


def _to_array(image: PILImage.Image, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """``image`` in ``mode`` as [H, W, C] uint8; with ``size`` (H, W): scaled to cover it, then center-cropped
    (ImageNet's Resize + CenterCrop, so a non-square photo is not squashed; a square one is simply resized)."""
    image = image.convert(mode)
    if size is not None and image.size != (size[1], size[0]):
        width, height = image.size
        scale = max(size[1] / width, size[0] / height)
        covered = (max(size[1], round(width * scale)), max(size[0], round(height * scale)))
        image = image.resize(covered, PILImage.BILINEAR)
        left, top = (covered[0] - size[1]) // 2, (covered[1] - size[0]) // 2
        image = image.crop((left, top, left + size[1], top + size[0]))
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _decode_items(items: list[dict], rows, column: str, mode: str, size) -> np.ndarray:
    """Undecoded image cells (``{"bytes", "path"}``) of ``rows`` -> [n, H, W, C] uint8, naming a bad row."""
    arrays = []
    for row, item in zip(rows, items, strict=True):
        try:
            if item["bytes"] is not None:
                image = PILImage.open(io.BytesIO(item["bytes"]))
            else:
                image = PILImage.open(item["path"])
            arrays.append(_to_array(image, mode, size))
        except Exception as err:  # PIL raises several types for corrupt data
            raise DataError(f"unreadable image in column {column!r}, row {int(row)}: {err}") from err
    return np.stack(arrays) if arrays else np.zeros((0, *(size or (0, 0)), len(mode)), np.uint8)


def _decode_rows(ds: Dataset, column: str, rows, mode: str, size) -> np.ndarray:
    """Decode ``rows`` of ``column`` to an [n, H, W, C] uint8 array, naming the row of an unreadable image."""
    rows = [int(r) for r in rows]
    raw = ds.cast_column(column, Image(decode=False))
    return _decode_items(raw[rows][column] if rows else [], rows, column, mode, size)


def _decode_all(ds: Dataset, column: str, mode: str, size) -> np.ndarray:
    """Decode a whole column at once; falls back to row-by-row decoding to report the bad row."""
    try:
        array = ds.cast_column(column, Image(mode=mode)).with_format("numpy")[column][:]
        if isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim in (3, 4):
            array = array[..., None] if array.ndim == 3 else array
            if size is None or array.shape[1:3] == tuple(size):
                return array
    except Exception:  # unreadable or ragged images: decode row by row below for a precise error
        pass
    return _decode_rows(ds, column, range(len(ds)), mode, size)


class _ImageSource:
    """Random access to uint8 images [n, C, H, W]."""

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _TensorSource(_ImageSource):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


class _ArrowSource(_ImageSource):
    """Decodes on demand from the Arrow table (one batched read per request); memory holds only the batch."""

    def __init__(self, ds: Dataset, column: str, mode: str, size: tuple[int, int]) -> None:
        self.raw, self.column, self.mode, self.size = ds.cast_column(column, Image(decode=False)), column, mode, size

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        rows = indices.reshape(-1).tolist()
        items = self.raw[rows][self.column] if rows else []
        # NCHW with the standard strides, as the in-memory store: a permuted view (even a 1-channel one, which
        # counts as contiguous) also reads as channels-last, and convolutions then pick other kernels (other bits)
        pixels = _decode_items(items, rows, self.column, self.mode, self.size)
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


class _PositionBatches(torch.utils.data.Dataset):
    """Item ``i``: the uint8 images and labels of the ``i``-th chunk of store positions, decoded in a worker."""

    def __init__(self, store: RealImageStore, chunks: list[torch.Tensor]) -> None:
        self.store, self.chunks = store, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.store.uint8(self.chunks[i]), self.store.labels[self.chunks[i]]


# --------------------------------------------------------------------------------------------- store


class RealImageStore:
    """Class-indexed real images: uint8 storage, normalized on the fly, seeded class-balanced sampling.

    ``transform`` (e.g. :class:`cmidd_hf.data.transforms.ZCAWhitening`) is applied after normalization to every
    image the store hands out; ``denormalize`` undoes it first. ``num_workers`` > 0 decodes the batches of
    :meth:`batches` in DataLoader worker processes (Arrow-backed stores); the order is always the caller's."""

    def __init__(
        self,
        source: _ImageSource | torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_shape: tuple[int, int, int],
        indices: torch.Tensor | None = None,
        transform=None,
        num_workers: int = 0,
    ) -> None:
        self.transform, self.num_workers = transform, num_workers
        self.source = _TensorSource(source) if isinstance(source, torch.Tensor) else source
        self.all_labels = labels.long()
        self.indices = torch.arange(len(labels)) if indices is None else indices
        self.labels = self.all_labels[self.indices]
        self.num_classes = num_classes
        self.image_shape = image_shape
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._statistics: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.class_positions = [torch.nonzero(self.labels == c).flatten() for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions: torch.Tensor) -> RealImageStore:
        """A store over some of this store's images (shares the decoded data)."""
        return RealImageStore(self.source, self.all_labels, self.num_classes, tuple(self.mean.flatten().tolist()),
                              tuple(self.std.flatten().tolist()), self.image_shape, self.indices[positions],
                              self.transform, self.num_workers)

    def with_transform(self, transform) -> RealImageStore:
        """The same images seen through ``transform`` (None: plain normalized)."""
        return RealImageStore(self.source, self.all_labels, self.num_classes, tuple(self.mean.flatten().tolist()),
                              tuple(self.std.flatten().tolist()), self.image_shape, self.indices, transform,
                              self.num_workers)

    def class_count(self, c: int) -> int:
        return len(self.class_positions[c])

    def uint8(self, positions: torch.Tensor) -> torch.Tensor:
        return self.source[self.indices[positions]]

    def normalize(self, images_u8: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """uint8 [n, C, H, W] -> normalized float32 on ``device`` (to a GPU through pinned memory, so the copy
        does not wait for the work queued before it)."""
        if device is not None and torch.device(device).type == "cuda" and images_u8.device.type == "cpu":
            images_u8 = images_u8.pin_memory()
        x = images_u8.to(device=device, non_blocking=True).float().div_(255.0)
        mean, std = self._statistics_on(x.device)
        return (x - mean) / std

    def _statistics_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) on ``device``, copied there once."""
        if device not in self._statistics:
            self._statistics[device] = (self.mean.to(device), self.std.to(device))
        return self._statistics[device]

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            images = self.transform.inverse(images)
        return images * self.std.to(images.device) + self.mean.to(images.device)

    def images(self, positions: torch.Tensor, device=None) -> torch.Tensor:
        return self._prepare(self.uint8(positions), device)

    def _prepare(self, images_u8: torch.Tensor, device=None) -> torch.Tensor:
        """uint8 images -> normalized (and transformed) float images on ``device``."""
        images = self.normalize(images_u8, device)
        return images if self.transform is None else self.transform(images)

    @property
    def streamed(self) -> bool:
        """Whether images are decoded from Arrow on demand (``in_memory=False``) rather than held in memory."""
        return isinstance(self.source, _ArrowSource)

    def batches(self, chunks: list[torch.Tensor], device=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalized images on ``device``, labels) for each chunk of positions, in the given order; a streamed
        store with ``num_workers`` decodes ahead in DataLoader workers, so decoding overlaps the training step."""
        if self.streamed and self.num_workers > 0 and len(chunks) > 1:
            loader = torch.utils.data.DataLoader(_PositionBatches(self, chunks), batch_size=None, shuffle=False,
                                                 num_workers=self.num_workers, prefetch_factor=4)
            pairs = iter(loader)
        else:
            pairs = (_PositionBatches(self, chunks)[i] for i in range(len(chunks)))
        for images_u8, labels in pairs:
            yield self._prepare(images_u8, device), labels.to(device)

    def sample_positions(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` distinct random positions of class ``c``."""
        available = self.class_count(c)
        if n > available:
            raise DataError(
                f"class {c} has {available} images but {n} were requested; lower the request "
                f"(e.g. ipc or batch_real) to at most {available}"
            )
        order = torch.randperm(available, generator=generator)[:n]
        return self.class_positions[c][order]

    def sample(self, c: int, n: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """``n`` distinct random normalized images of class ``c``."""
        return self.images(self.sample_positions(c, n, generator), device)

    def balanced_subset(self, per_class: int, generator: torch.Generator) -> torch.Tensor:
        """Positions of a random class-balanced subset, ``per_class`` images of every class, class-sorted."""
        return torch.cat([self.sample_positions(c, per_class, generator) for c in range(self.num_classes)])


@dataclass
class ImageClassificationData:
    """A loaded dataset: train/test (and optional validation) stores plus metadata.

    ``train_subset``: which training images ``train`` holds: "" for the dataset's whole ``train`` split, else the
    configuration, split and hold-out rule that differ (e.g. "minus-val100-seed0", "split-extra"), so artifacts
    trained on it (proxies, experts, teachers) are cached apart and a run never reuses ones that saw its validation
    images.
    """

    name: str
    train: RealImageStore
    test: RealImageStore | None
    validation: RealImageStore | None
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    license: str | None = None
    train_subset: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    def with_transform(self, transform) -> ImageClassificationData:
        """Every split seen through ``transform`` (e.g. ZCA whitening fitted on the training split)."""
        stores = [None if s is None else s.with_transform(transform) for s in (self.train, self.test, self.validation)]
        return replace(self, train=stores[0], test=stores[1], validation=stores[2])

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image_shape[1], self.image_shape[2]


def _channel_mode(channels: int | str | None, ds: Dataset, column: str) -> str:
    if channels is None:
        if len(ds) == 0:
            raise DataError("the training split is empty")
        first = ds.cast_column(column, Image(decode=False))[0][column]
        try:
            image = PILImage.open(io.BytesIO(first["bytes"]) if first["bytes"] is not None else first["path"])
        except Exception as err:
            raise DataError(f"unreadable image in column {column!r}, row 0: {err}") from err
        return "L" if image.mode in ("L", "1", "I", "I;16", "F") else "RGB"
    modes = {1: "L", 3: "RGB", "1": "L", "3": "RGB", "L": "L", "RGB": "RGB", "grayscale": "L", "rgb": "RGB"}
    mode = modes.get(channels)
    if mode is None:
        raise DataError(f"channels={channels!r}; use 1 ('L') or 3 ('RGB')")
    return mode


def _compute_stats(store_u8: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = store_u8.float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def load_image_classification(
    source: str | os.PathLike | Dataset | DatasetDict,
    *,
    name: str | None = None,
    config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
    channels: int | str | None = None,
    image_size: int | tuple[int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    validation_per_class: int = 0,
    seed: int = 0,
    in_memory: bool = True,
    num_workers: int = 0,
) -> ImageClassificationData:
    """Load an image-classification dataset into class-indexed stores.

    Normalization: ``mean``/``std`` if given, else the known statistics of the dataset (by ``name`` or
    source id), else computed from the training split. ``validation_per_class`` images of every class are
    carved out of the training split (seeded) for model selection; the test split is never used for that.
    ``in_memory=False`` keeps the images in Arrow (memory-mapped) and decodes each batch when it is read, in
    ``num_workers`` DataLoader workers: what evaluation and teacher training need at ImageNet scale.
    """
    if num_workers < 0:
        raise DataError(f"num_workers={num_workers}; use 0 (decode in this process) or more")
    sizes = (image_size,) if isinstance(image_size, int) else tuple(image_size or ())
    if any(int(v) < 1 for v in sizes):
        raise DataError(f"image_size={image_size}; use a positive size (or none to keep the images' size)")
    workers = 0 if in_memory else num_workers
    dsd, folder = resolve_dataset(source, config_name)
    if name is None:
        name = str(source).rstrip("/").split("/")[-1] if isinstance(source, (str, os.PathLike)) else "dataset"
    for field_name, split in (("train_split", train_split), ("test_split", test_split)):
        if split is not None and split not in dsd:
            raise DataError(f"{field_name}={split!r} not found; the dataset has splits {list(dsd)}")
    train_ds = dsd[train_split]
    image_column, label_column = find_columns(train_ds.features, image_column, label_column)
    mode = _channel_mode(channels, train_ds, image_column)
    size = (image_size, image_size) if isinstance(image_size, int) else (tuple(image_size) if image_size else None)

    label_feature = train_ds.features[label_column]
    train_labels = torch.as_tensor(np.asarray(train_ds.with_format("numpy")[label_column][:], dtype=np.int64))
    if isinstance(label_feature, ClassLabel):
        class_names = list(label_feature.names)
    else:
        class_names = [str(c) for c in range(int(train_labels.max()) + 1)]
    num_classes = len(class_names)

    def open_split(ds: Dataset) -> tuple[_ImageSource | torch.Tensor, torch.Tensor, tuple[int, int, int]]:
        missing = [c for c in (image_column, label_column) if c not in ds.features]
        if missing:
            raise DataError(f"columns {missing} are missing from a split; columns are {list(ds.features)}")
        labels = torch.as_tensor(np.asarray(ds.with_format("numpy")[label_column][:], dtype=np.int64))
        if in_memory:
            u8 = torch.from_numpy(_decode_all(ds, image_column, mode, size)).permute(0, 3, 1, 2).contiguous()
            return u8, labels, tuple(u8.shape[1:])
        first = _decode_rows(ds, image_column, [0], mode, size)[0]
        shape = (first.shape[2], first.shape[0], first.shape[1])
        return _ArrowSource(ds, image_column, mode, size or shape[1:]), labels, shape

    train_source, train_labels, image_shape = open_split(train_ds)
    if mean is None or std is None:
        stats = known_stats(name)
        if stats is not None and len(stats[0]) != image_shape[0]:  # e.g. MNIST converted to RGB
            stats = (stats[0] * image_shape[0], stats[1] * image_shape[0]) if len(stats[0]) == 1 else None
        if stats is None:
            if isinstance(train_source, torch.Tensor):
                stats = _compute_stats(train_source)
            else:  # Arrow-backed: estimate from up to 10,000 seeded random training images
                rows = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))[:10000]
                stats = _compute_stats(train_source[rows])
        mean, std = mean or stats[0], std or stats[1]
    if len(mean) != image_shape[0] or len(std) != image_shape[0]:
        raise DataError(f"mean/std have {len(mean)}/{len(std)} values but images have {image_shape[0]} channels")

    train = RealImageStore(train_source, train_labels, num_classes, mean, std, image_shape, num_workers=workers)
    validation = None
    if validation_per_class > 0:
        generator = torch.Generator().manual_seed(seed)
        held_out = train.balanced_subset(validation_per_class, generator)
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[held_out] = False
        validation = train.subset(held_out)
        train = train.subset(torch.nonzero(keep).flatten())
    test = None
    if test_split is not None:
        test_source, test_labels, test_shape = open_split(dsd[test_split])
        if test_shape != image_shape:
            raise DataError(f"test images are {test_shape} but train images are {image_shape}; set image_size")
        test = RealImageStore(test_source, test_labels, num_classes, mean, std, image_shape, num_workers=workers)
    subset = [f"config-{config_name}"] if config_name else []
    subset += [f"split-{train_split}"] if train_split != "train" else []
    subset += [f"minus-val{validation_per_class}-seed{seed}"] if validation is not None else []
    return ImageClassificationData(name, train, test, validation, class_names, tuple(mean), tuple(std),
                                   card_license(folder, dsd), "-".join(subset))
