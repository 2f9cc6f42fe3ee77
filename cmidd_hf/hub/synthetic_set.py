"""A distilled set as one object that saves to a Hub-layout folder, loads back, pushes, and exports.

``SyntheticSet`` holds the exact float images (normalized space), labels, class names, normalization and the
card's ``distillation`` block (provenance and results). Its folder is what ``Dataset.push_to_hub`` writes
(``data/train-*.parquet`` or ``<config>/train-*.parquet``, README card with ``dataset_info``/``configs``), so
plain ``datasets.load_dataset`` reads it too: ``image`` (PNG), ``label`` (ClassLabel) and ``pixel_values``
(the exact float32 tensor). ``load_synthetic`` reads folders and Hub repos (through ``snapshot_download``, so
the Hub cache works offline).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from datasets import Array3D, ClassLabel, Dataset, Features, Image, Sequence, Value
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from ..data.errors import DataError
from ..data.hub_layout import load_folder, write_hub_dataset
from ..data.loading import find_columns, known_stats
from ..data.transforms import ZCA_FILE, ZCAWhitening
from ..engine.parametrization import CondensedSet
from ..engine.run_folder import CONDENSED, CONFIG, GRID
from .card import asset_prefix, build_card_data, plain, render_card
from .figures import save_grid, to_uint8_images


@dataclass
class SyntheticSet:
    """A labelled synthetic image set with its normalization, provenance and results.

    Attributes:
        images: [N, C, H, W] float32 in normalized space (``(pixel - mean) / std``), exact.
        labels: [N] int64 class indices into ``class_names``, or soft labels [N, len(class_names)] (float32
            probability rows, e.g. a teacher's outputs); saved as ``label`` (the argmax) plus ``soft_label``.
        class_names: names of all classes (also those without images).
        mean, std: per-channel normalization of ``images``.
        distillation: the card's block for this config: method, regularizer, ipc, ..., ``results``,
            ``baselines``.
        source: the real dataset it was distilled from (Hub id or name), if known.
        license: license of the source data (inherited by the set); None = unknown.
        config_name: the dataset config it is saved/pushed as ("default" -> ``data/``).
        condensed: for multi-formation sets (IDC, IDM), the stored tensors and decode factor that ``images``
            were decoded from; saved as ``condensed.safetensors`` next to the grid.
        transform: the data transform ``images`` live in (MTT with ZCA: whitened), saved as ``zca.safetensors``
            next to the grid; apply it to test data normalized with ``mean``/``std`` before evaluating
            (``data.with_transform(set.transform)``). PNGs and grids show the inverse-transformed images.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    distillation: dict = field(default_factory=dict)
    source: str | None = None
    license: str | None = None
    config_name: str = "default"
    condensed: CondensedSet | None = None
    transform: ZCAWhitening | None = None

    def __post_init__(self) -> None:
        self.images = torch.as_tensor(self.images).detach().cpu().float().contiguous()
        labels = torch.as_tensor(self.labels).detach().cpu()
        self.labels = labels.float().contiguous() if labels.dim() == 2 else labels.long()
        self.class_names = [str(n) for n in self.class_names]
        self.mean, self.std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if self.images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.shape[:1] != self.images.shape[:1] or self.labels.dim() > 2:
            raise ValueError(f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}")
        if self.soft:
            check_soft_labels(self.labels, len(self.class_names))
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)) and not self.soft:
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}) for {len(self.class_names)} "
                             f"class names, got [{int(self.labels.min())}, {int(self.labels.max())}]")
        if len(self.mean) != self.images.shape[1] or len(self.std) != self.images.shape[1]:
            raise ValueError(f"mean/std have {len(self.mean)}/{len(self.std)} values for "
                             f"{self.images.shape[1]}-channel images")
        check_config_name(self.config_name)
        self.distillation = dict(self.distillation)

    # ------------------------------------------------------------------ views

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def soft(self) -> bool:
        """Whether the labels are probability rows [N, C]."""
        return self.labels.dim() == 2

    @property
    def hard_labels(self) -> torch.Tensor:
        """Class indices [N] (the argmax of soft labels)."""
        return self.labels.argmax(dim=1) if self.soft else self.labels

    @property
    def ipc(self) -> int | None:
        """Images per class (by hard label) when every class has the same number, else None."""
        counts = torch.bincount(self.hard_labels, minlength=self.num_classes)
        return int(counts[0]) if len(counts) and bool((counts == counts[0]).all()) else None

    @property
    def results(self) -> list[dict]:
        return list(self.distillation.get("results") or [])

    def viewable(self) -> torch.Tensor:
        """The images in normalized space (the inverse transform applied, if any): what PNGs and grids show."""
        return self.images if self.transform is None else self.transform.inverse(self.images)

    def denormalized(self) -> torch.Tensor:
        """``images * std + mean`` (after the inverse transform): pixel scale, not clipped (optimized values may
        leave [0, 1])."""
        return self.viewable() * torch.tensor(self.std).view(1, -1, 1, 1) + torch.tensor(self.mean).view(1, -1, 1, 1)

    def renormalized(self, mean: tuple[float, ...], std: tuple[float, ...]) -> SyntheticSet:
        """The same set expressed in another normalization (e.g. the evaluation data's)."""
        if self.transform is not None:
            raise ValueError("a set in a transformed (ZCA) space cannot be renormalized; evaluate it against data "
                             f"normalized with its own mean {list(self.mean)} and std {list(self.std)}")
        images = (self.denormalized() - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        return replace(self, images=images, mean=tuple(mean), std=tuple(std))

    def record_results(self, results: Iterable, kind: str = "results") -> None:
        """Add evaluation results (``EvaluationResult`` or their dicts) to ``distillation[kind]``.

        ``kind="baselines"``: random real subsets of the set's IPC (labelled so in the card). An earlier entry
        with the same architecture, protocol and epochs is replaced.
        """
        if kind not in ("results", "baselines"):
            raise ValueError(f"kind must be 'results' or 'baselines', got {kind!r}")
        entries = [plain(r.to_dict() if hasattr(r, "to_dict") else dict(r)) for r in results]
        if kind == "baselines":
            entries = [{"kind": f"random real subset, ipc {self.ipc}", **e} for e in entries]
        keys = {(e["arch"], e["protocol"], e["epochs"]) for e in entries}
        kept = [e for e in self.distillation.get(kind) or [] if (e["arch"], e["protocol"], e["epochs"]) not in keys]
        self.distillation[kind] = kept + entries

    def record_dd_ranking(self, scores: Iterable) -> None:
        """Add DD-Ranking scores (``DDRankingScores`` or their dicts) to ``distillation["dd_ranking"]``; an earlier
        entry for the same architecture and protocols is replaced."""
        entries = [plain(s.to_dict() if hasattr(s, "to_dict") else dict(s)) for s in scores]
        key = lambda e: (e["arch"], e["soft_protocol"], e["hard_protocol"])  # noqa: E731
        keys = {key(e) for e in entries}
        kept = [e for e in self.distillation.get("dd_ranking") or [] if key(e) not in keys]
        self.distillation["dd_ranking"] = kept + entries

    def to_dataset(self) -> Dataset:
        """The rows as a ``datasets.Dataset``: image (PNG), label (ClassLabel), pixel_values (float32), and
        soft_label (float32 [C]) for a set with soft labels."""
        features = {"image": Image(), "label": ClassLabel(names=self.class_names),
                    "pixel_values": Array3D(self.image_shape, "float32")}
        columns = {"image": list(to_uint8_images(self.viewable(), self.mean, self.std)),
                   "label": self.hard_labels.tolist(), "pixel_values": self.images.numpy()}
        if self.soft:
            features[SOFT_LABEL] = Sequence(Value("float32"), length=self.num_classes)
            columns[SOFT_LABEL] = self.labels.numpy()
        return Dataset.from_dict(columns, features=Features(features))

    def _block(self) -> dict:
        block = dict(self.distillation)
        block.setdefault("ipc", self.ipc)
        block.setdefault("image_size", list(self.image_shape))
        block["labels"] = "soft" if self.soft else "hard"
        block["normalization"] = {"mean": list(self.mean), "std": list(self.std)}
        return block

    # ------------------------------------------------------------------ folders

    def save(self, folder: str | os.PathLike, extra_files: Mapping[str, str | os.PathLike] | None = None,
             repo_id: str | None = None) -> Path:
        """Write this config into ``folder`` (data, README card, grid); other configs and files there stay.

        ``extra_files`` maps names (relative to this config's asset folder) to files copied in, e.g.
        ``{"curves.png": ...}``. The card of an existing folder is merged, not replaced.
        """
        folder = Path(folder)
        existing = _read_card(folder)
        return self._write(folder, existing, extra_files, repo_id, replace_folder=False)

    def _write(self, folder: Path, existing: DatasetCardData | None, extra_files, repo_id: str | None,
               replace_folder: bool) -> Path:
        card_data = build_card_data(existing, self.config_name, self._block(), self.source, self.license,
                                    len(self.labels))
        prefix = asset_prefix(self.config_name)
        with tempfile.TemporaryDirectory() as tmp:
            grid = save_grid(self.viewable(), self.hard_labels, self.mean, self.std, Path(tmp) / GRID)
            files = {f"{prefix}{GRID}": grid}
            if self.condensed is not None:
                files[f"{prefix}{CONDENSED}"] = save_condensed(self.condensed, Path(tmp) / CONDENSED)
            if self.transform is not None:
                files[f"{prefix}{ZCA_FILE}"] = self.transform.save(tmp)
            files.update({f"{prefix}{name}": path for name, path in (extra_files or {}).items()})
            return write_hub_dataset({"train": self.to_dataset()}, folder, card_data,
                                     lambda data: render_card(data, repo_id), config_name=self.config_name,
                                     extra_files=files, replace_folder=replace_folder)

    @classmethod
    def load(cls, source: str | os.PathLike, config: str | None = None, revision: str | None = None,
             mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> SyntheticSet:
        """See :func:`load_synthetic`."""
        return load_synthetic(source, config, revision, mean, std)

    # ------------------------------------------------------------------ the Hub

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    commit_message: str | None = None,
                    extra_files: Mapping[str, str | os.PathLike] | None = None):
        """Create the dataset repo if needed and upload this config in one commit; returns the ``CommitInfo``.

        The repo's existing card is merged (another config pushed before, e.g. IPC 10 next to IPC 50, keeps
        its block, data and files). ``token``: None uses ``HF_TOKEN`` or the ``hf auth login`` token; it is
        never written anywhere.
        """
        check_repo_id(repo_id)
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        existing = _remote_card(api, repo_id)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "upload"
            self._write(folder, existing, extra_files, repo_id, replace_folder=True)
            message = commit_message or (f"Upload distilled set ({self.config_name}: {len(self.labels)} images, "
                                         f"{self.distillation.get('method', 'synthetic')})")
            return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="dataset",
                                     commit_message=message)


SOFT_LABEL = "soft_label"


def check_soft_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Soft labels are rows of ``num_classes`` non-negative probabilities summing to 1."""
    if labels.shape[1] != num_classes:
        raise ValueError(f"soft labels have {labels.shape[1]} columns for {num_classes} class names")
    if not bool(torch.isfinite(labels).all()) or bool((labels < 0).any()) or \
            not torch.allclose(labels.sum(1), torch.ones(len(labels)), atol=1e-3):
        raise ValueError("soft labels must be finite, non-negative rows that sum to 1")


def check_repo_id(repo_id: str, field: str = "repo_id") -> None:
    """A Hub repo id must be 'org/name'; the error names ``field`` (the argument the user set)."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"{field}={repo_id!r}: use the form 'org/name'")


def check_config_name(name: str, field: str = "config_name") -> None:
    """A dataset config name is a plain folder name; "data" is where the default config lives."""
    if not name or name == "data" or "/" in name:
        raise ValueError(f"{field}={name!r}: use a plain name such as 'default' or 'ipc50' ('data' is reserved)")


def _read_card(folder: Path) -> DatasetCardData | None:
    readme = folder / "README.md"
    return DatasetCard.load(readme).data if readme.is_file() else None


def _remote_card(api: HfApi, repo_id: str) -> DatasetCardData | None:
    """The repo's current card, or None for a repo without one."""
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError

    try:
        path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset")
    except (EntryNotFoundError, RemoteEntryNotFoundError):
        return None
    return DatasetCard.load(path).data


def resolve_folder(source: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder for ``source``: the folder itself, or the Hub snapshot of a dataset repo id."""
    if os.path.isdir(source):
        return Path(source)
    source = str(source)
    if os.path.exists(source) or source.count("/") != 1:
        raise DataError(f"{source!r} is neither a folder in Hub layout nor a Hub dataset id 'org/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, repo_type="dataset", revision=revision))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise DataError(f"{source!r} could not be fetched from the Hugging Face Hub or found in the Hub cache "
                        f"({type(err).__name__}). Check the id, your network, or HF_HUB_OFFLINE.") from err


def _pick_config(configs: MetadataConfigs, config: str | None, where: str) -> str | None:
    names = list(configs)
    if config is not None:
        if names and config not in names:
            raise DataError(f"config={config!r} not in {where}; its configs are {names}")
        return config
    if not names:
        return None
    if "default" in names:
        return "default"
    marked = [n for n, c in configs.items() if c.get("default")]
    if len(names) == 1 or marked:
        return (marked or names)[0]
    raise DataError(f"{where} has several configs {names}; pass config=<one of them>")


def load_synthetic(
    source: str | os.PathLike,
    config: str | None = None,
    revision: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> SyntheticSet:
    """Load a distilled set from a Hub-layout folder or a Hub dataset repo id (offline from the Hub cache).

    Exact float images come from ``pixel_values``; normalization, provenance and results from the card's
    ``distillation`` block of ``config`` (default: the repo's default config). Plain image datasets without
    ``pixel_values`` work too: their ``image`` column is normalized with ``mean``/``std`` (or the card's, or
    the known statistics of the source dataset).
    """
    folder = resolve_folder(source, revision)
    card = _read_card(folder)
    if card is None and (folder / CONFIG).is_file():
        raise DataError(f"{source!r} is a run folder without a finished set (no README.md card yet): let the run "
                        "finish, or resume it with --resume_from_checkpoint latest")
    configs = MetadataConfigs.from_dataset_card_data(card) if card is not None else MetadataConfigs()
    config = _pick_config(configs, config, str(source))
    ds = load_folder(folder, name=config, split="train")
    blocks = (card.to_dict().get("distillation") if card is not None else None) or {}
    block = dict(blocks.get(config or "default") or {})
    image_column, label_column = find_columns(ds.features)
    label_feature = ds.features[label_column]
    labels = torch.as_tensor(np.asarray(ds.with_format("numpy")[label_column][:], dtype=np.int64))
    class_names = list(label_feature.names) if isinstance(label_feature, ClassLabel) else \
        [str(c) for c in range(int(labels.max()) + 1)]
    if SOFT_LABEL in ds.features:
        labels = ds.with_format("torch", columns=[SOFT_LABEL])[SOFT_LABEL][:].float()
    sources = (card.source_datasets if card is not None else None) or []
    norm = block.get("normalization") or {}
    mean = mean or norm.get("mean")
    std = std or norm.get("std")
    if "pixel_values" in ds.features:
        images = ds.with_format("torch", columns=["pixel_values"])["pixel_values"][:].float()
    else:
        if mean is None or std is None:
            stats = next((known_stats(s) for s in [*sources, str(source)] if known_stats(s)), None)
            if stats is None:
                raise DataError(f"{source!r} has no pixel_values column and no recorded normalization; pass "
                                "mean=... and std=... (the statistics the evaluation data is normalized with)")
            mean, std = stats
        pixels = ds.with_format("torch", columns=[image_column])[image_column][:]
        if pixels.dim() == 3:
            pixels = pixels.unsqueeze(1)
        images = (pixels.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    if mean is None or std is None:
        raise DataError(f"the card of {source!r} records no normalization for config {config!r}; pass mean= and "
                        "std=")
    license = card.license if card is not None else None
    condensed_file = folder / asset_prefix(config or "default") / CONDENSED
    condensed = load_condensed_file(condensed_file) if condensed_file.is_file() else None
    transform = ZCAWhitening.load(folder / asset_prefix(config or "default")) if block.get("transform") else None
    if block.get("transform") and transform is None:
        raise DataError(f"the card of {source!r} says its images are {block['transform'].get('type')}-transformed "
                        f"but {ZCA_FILE} is missing; re-download the set")
    return SyntheticSet(images, labels, class_names, tuple(mean), tuple(std), block,
                        sources[0] if sources else None, license, config or "default", condensed, transform)


def load_condensed(source: str | os.PathLike, config: str | None = None,
                   revision: str | None = None) -> CondensedSet:
    """The stored (condensed) tensors and decode factor of a multi-formation set (IDC, IDM), from a folder or
    Hub repo; :func:`load_synthetic` gives the decoded training images."""
    synthetic = load_synthetic(source, config, revision)
    if synthetic.condensed is None:
        raise DataError(f"{source!r} (config {synthetic.config_name!r}) holds no {CONDENSED}: it is not a "
                        "multi-formation set; use load_synthetic for its images")
    return synthetic.condensed


def save_condensed(condensed: CondensedSet, path: Path) -> Path:
    """``pixels`` and ``labels`` as safetensors, the factor in the metadata."""
    from safetensors.torch import save_file

    save_file({"pixels": condensed.pixels.contiguous().float(), "labels": condensed.labels.long()}, str(path),
              metadata={"factor": str(condensed.factor), "decode": "single", "pixel_scale": "0..1"})
    return path


def load_condensed_file(path: Path) -> CondensedSet:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        factor = int(f.metadata()["factor"])
        return CondensedSet(f.get_tensor("pixels"), f.get_tensor("labels"), factor)

