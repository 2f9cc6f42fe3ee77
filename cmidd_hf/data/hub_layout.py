"""Write datasets in the exact layout ``push_to_hub`` produces, and read such folders back (:func:`load_folder`).

Folders are written to a temporary sibling and renamed into place: a crash never leaves half a dataset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, load_dataset
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData


def load_folder(folder: str | os.PathLike, name: str | None = None,
                split: str | None = None) -> Dataset | DatasetDict:
    """``load_dataset`` of a local Hub-layout folder, its Arrow cache keyed by the folder's files.

    For a folder whose card declares ``configs`` (every folder this library writes, and Hub snapshots),
    ``datasets`` 5.2 keys its cache by the folder's *name*, the card's features and the file patterns, not by
    the files: a second folder of the same name and shape (a rerun into the same ``output_dir``, a set saved
    under another parent) was read back with the first one's rows. A fingerprint of every visible file
    (relative path, size, modification time) gives each version of a folder a cache of its own; the copies of
    the folder's earlier versions are removed, so rewriting a folder does not grow the cache.
    """
    root = Path(folder)
    place = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    files = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            stat = path.stat()
            files.update(f"{relative.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    caches = Path(datasets.config.HF_DATASETS_CACHE) / "cmidd-local"
    cache_dir = caches / f"{place}-{files.hexdigest()[:20]}"
    for superseded in caches.glob(f"{place}-*"):
        if superseded != cache_dir:
            shutil.rmtree(superseded, ignore_errors=True)
    return load_dataset(str(root), name=name, split=split, cache_dir=str(cache_dir))


def write_hub_dataset(
    splits: dict[str, Dataset],
    out_dir: str | os.PathLike,
    card_data: DatasetCardData,
    render: Callable[[DatasetCardData], DatasetCard],
    config_name: str = "default",
    extra_files: dict[str, str | os.PathLike] | None = None,
    replace_folder: bool = True,
) -> Path:
    """Write ``splits`` as ``<data_dir>/<split>-00000-of-00001.parquet`` plus a README dataset card.

    ``card_data`` receives this config's ``dataset_info`` and ``configs`` entries like ``push_to_hub`` writes
    them (entries of other configs already in ``card_data`` are kept); ``render`` turns the merged metadata
    into the card. ``extra_files`` maps paths inside the folder to files copied in (e.g. ``grid.png``). With
    ``replace_folder`` the whole ``out_dir`` is replaced atomically; otherwise only this config's data folder,
    the README and the extra files are (other files and configs stay).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir = "data" if config_name == "default" else config_name
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / data_dir).mkdir()
        split_dict = SplitDict()
        total_bytes = download_bytes = 0
        data_files = []
        features = None
        for split, ds in splits.items():
            path = staging / data_dir / f"{split}-00000-of-00001.parquet"
            ds.to_parquet(str(path))
            split_dict.add(SplitInfo(split, num_bytes=ds.data.nbytes, num_examples=len(ds)))
            total_bytes += ds.data.nbytes
            download_bytes += path.stat().st_size
            data_files.append({"split": split, "path": f"{data_dir}/{split}-*"})
            features = ds.features
        info = DatasetInfo(features=features, download_size=download_bytes, dataset_size=total_bytes,
                           splits=split_dict)
        DatasetInfosDict({config_name: info}).to_dataset_card_data(card_data)
        MetadataConfigs({config_name: {"data_files": data_files}}).to_dataset_card_data(card_data)
        render(card_data).save(staging / "README.md")
        for name, src in (extra_files or {}).items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, staging / name)
        if replace_folder:
            replace_dir(staging, out_dir)
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            for entry in staging.rglob("*"):
                relative = entry.relative_to(staging)
                if entry.is_file() and relative.parts[0] != data_dir:  # the data folder is swapped whole
                    (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(entry, out_dir / relative)
            replace_dir(staging / data_dir, out_dir / data_dir)
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` with at most a moment of absence."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
