"""Expert trajectories for trajectory matching (MTT): networks trained on the real data, their parameters
snapshotted as one flat vector before training and after every epoch.

A folder (local, Hub repo, or trained once into a cache through :mod:`cmidd_hf.artifacts.resolver`) holds

* ``experts.json`` — dataset, architecture, parameter names and shapes, the training recipe, the data transform
  (ZCA) and one record per expert (file, seed, test accuracy);
* ``expert-0000.safetensors`` ... — tensor ``trajectory`` [epochs + 1, num_params] (fp32), written atomically
  one expert at a time, so an interrupted training run resumes at the next expert;
* ``zca.safetensors`` when the experts were trained on ZCA-whitened images; ``README.md`` (model card).

The official buffer recipe (MTT ``buffer.py``): SGD lr 0.01, momentum 0, no weight decay, batch 256, DSA
``color_crop_cutout_flip_scale_rotate`` on every batch (``auto``: that, without flip for digits), constant
lr, ``epochs`` epochs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..data.augment import DSA_STRATEGY, default_augmentation, parse_strategy
from ..data.loading import ImageClassificationData
from ..data.transforms import ZCA_FILE, ZCAWhitening
from ..evaluation.protocols import EvalProtocol
from ..evaluation.trainer import EpochStats, NetworkTrainer, StoreSet
from .resolver import (
    ArtifactError,
    cached_or_built,
    push_artifact,
    resolve_artifact,
    sha256_file,
    training_data_key,
)

logger = logging.getLogger(__name__)

INDEX_FILE = "experts.json"
FORMAT = "cmidd-hf expert trajectories v1"
EXPERT_PATTERNS = (INDEX_FILE, "expert-*.safetensors", ZCA_FILE, "README.md")


class ExpertError(ArtifactError):
    """Expert trajectories that cannot be read or do not fit the run."""


def expert_file(index: int) -> str:
    return f"expert-{index:04d}.safetensors"


@dataclass(frozen=True)
class ExpertRecipe:
    """How experts are trained (defaults: MTT's ``buffer.py``)."""

    arch: str = "convnet3"
    num_experts: int = 100
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    augmentation: str = "auto"  # a DSA strategy, "none", or the dataset's default
    zca: bool = False
    seed: int = 0

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> ExpertRecipe:
        unknown = set(mapping) - set(cls.__dataclass_fields__)
        if unknown:
            raise ExpertError(f"unknown keys {sorted(unknown)} in an experts train: spec; "
                              f"known: {sorted(cls.__dataclass_fields__)}")
        recipe = cls(**mapping)
        recipe.check()
        if recipe.augmentation not in ("auto", "none"):
            try:
                parse_strategy(recipe.augmentation)
            except ValueError as err:
                raise ExpertError(f"experts augmentation: {err}") from None
        return recipe

    def check(self) -> None:
        if self.num_experts < 1 or self.epochs < 1:
            raise ExpertError(f"experts need num_experts >= 1 and epochs >= 1, got {self.num_experts} and "
                              f"{self.epochs}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ExpertError(f"experts need lr > 0 and batch_size >= 1, got {self.lr} and {self.batch_size}")

    def resolved_augmentation(self, dataset_name: str) -> str | None:
        if self.augmentation == "auto":
            return default_augmentation(dataset_name, DSA_STRATEGY)
        return None if self.augmentation == "none" else self.augmentation

    def protocol(self, dataset_name: str) -> EvalProtocol:
        return EvalProtocol("expert", self.epochs, self.lr, self.momentum, self.weight_decay, self.batch_size,
                            milestones=(), augmentation=self.resolved_augmentation(dataset_name))

    def cache_key(self, dataset: str) -> str:
        zca = "-zca" if self.zca else ""
        return (f"{dataset}-{self.arch}-n{self.num_experts}-e{self.epochs}-lr{self.lr}-m{self.momentum}-"
                f"b{self.batch_size}{zca}-s{self.seed}")


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    """All parameters of ``model`` as one fp32 vector, in ``named_parameters`` order (logical layout)."""
    return torch.cat([p.detach().float().reshape(-1).cpu() for p in model.parameters()])


class ExpertTrajectories:
    """Read access to a folder of expert trajectories: metadata, and two snapshots at a time."""

    def __init__(self, folder: str | os.PathLike, provenance: dict | None = None) -> None:
        self.folder = Path(folder)
        try:
            self.index = json.loads((self.folder / INDEX_FILE).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ExpertError(f"{self.folder} holds no readable {INDEX_FILE} ({type(err).__name__}: {err}); "
                              "train experts with scripts/train_experts.py") from None
        if self.index.get("format") != FORMAT or not self.index.get("experts"):
            raise ExpertError(f"{self.folder / INDEX_FILE} is not a finished set of expert trajectories "
                              f"(format {self.index.get('format')!r}, {len(self.index.get('experts', []))} experts)")
        for record in self.experts:
            path = self.folder / record["file"]
            if not path.is_file():
                raise ExpertError(f"expert file {path} is missing; re-download or re-train the experts")
        self.transform = ZCAWhitening.load(self.folder) if self.index.get("zca") else None
        if self.index.get("zca") and self.transform is None:
            raise ExpertError(f"{self.folder} says its experts were trained on ZCA-whitened images but holds no "
                              f"{ZCA_FILE}; re-download or re-train the experts")
        self.provenance = provenance or {"path": str(self.folder)}

    @classmethod
    def from_spec(cls, spec: str) -> ExpertTrajectories:
        resolved = resolve_artifact(spec, (INDEX_FILE,), "experts", EXPERT_PATTERNS)
        try:
            return cls(resolved.folder, resolved.provenance)
        except ExpertError as err:
            raise ExpertError(f"experts {spec!r}: {err}") from None

    @property
    def experts(self) -> list[dict]:
        return self.index["experts"]

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def epochs(self) -> int:
        return int(self.index["recipe"]["epochs"])

    @property
    def arch(self) -> str:
        return self.index["arch"]

    @property
    def parameters(self) -> list[tuple[str, list[int]]]:
        return [(name, list(shape)) for name, shape in self.index["parameters"]]

    def snapshots(self, expert: int, epochs: tuple[int, ...]) -> torch.Tensor:
        """The flat parameters of ``expert`` after each of ``epochs`` (0: its initialization), [len, P]."""
        path = self.folder / self.experts[expert]["file"]
        try:
            with safe_open(str(path), "pt") as f:
                trajectory = f.get_slice("trajectory")
                rows = [trajectory[e:e + 1] for e in epochs]
        except Exception as err:
            raise ExpertError(f"expert file {path} is unreadable ({type(err).__name__}: {err}); re-download or "
                              "re-train the experts") from None
        return torch.cat(rows).float()

    def check_fits(self, data: ImageClassificationData) -> None:
        """Refuse experts trained on other classes or image shapes."""
        if self.index["num_classes"] != data.num_classes or list(self.index["image_shape"]) != list(data.image_shape):
            raise ExpertError(f"experts in {self.folder} were trained on {self.index['dataset']!r} "
                              f"({self.index['num_classes']} classes, images {self.index['image_shape']}) but the "
                              f"dataset {data.name!r} has {data.num_classes} classes, images {list(data.image_shape)}; "
                              "use experts trained on this dataset")

    def describe(self) -> dict:
        """What a card records: where they came from, how many, how trained, and the sha256 of their index (it
        lists every expert's file and accuracy), which a resume must find again."""
        return {**self.provenance, "arch": self.arch, "num_experts": self.num_experts, "epochs": self.epochs,
                "recipe": self.index["recipe"], "zca": self.index.get("zca"),
                "sha256": sha256_file(self.folder / INDEX_FILE)}


# ------------------------------------------------------------------------------------------ training


def train_experts(recipe: ExpertRecipe, data: ImageClassificationData, folder: str | os.PathLike,
                  dataset_id: str, device=None, compile: bool = True, progress: bool = True,
                  on_expert: Callable[[int, float | None], None] | None = None) -> Path:
    """Train the experts of ``recipe`` into ``folder``, skipping those already there (resume per expert).

    ``data`` is the plain (normalized) dataset; with ``recipe.zca`` a ZCA transform is fitted on its training
    split (or the one already in ``folder`` is reused) and every expert trains and is tested in that space.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / INDEX_FILE
    previous = json.loads(index_path.read_text()) if index_path.is_file() else None
    if previous is not None and previous.get("recipe") != _recipe_record(recipe):
        raise ExpertError(f"{folder} holds experts of another recipe ({previous.get('recipe')}); train into a new "
                          "folder or repeat the original settings")
    transform = None
    if recipe.zca:
        transform = ZCAWhitening.load(folder)
        if transform is None:
            train = data.train
            transform = ZCAWhitening.fit(train.images(torch.arange(len(train))))
            transform.save(folder)
        data = data.with_transform(transform)
    trainer = NetworkTrainer(recipe.arch, data.num_classes, data.image_shape, recipe.protocol(data.name), device,
                             precision="auto", compile=compile)
    names = [(name, list(p.shape)) for name, p in trainer.model.named_parameters()]
    records = {r["index"]: r for r in (previous or {}).get("experts", [])}
    train_set = StoreSet(data.train, None, trainer.device)
    for index in range(recipe.num_experts):
        path = folder / expert_file(index)
        if index in records and path.is_file():
            continue
        seed = recipe.seed + index
        trainer.reset(seed)
        snapshots = [flat_parameters(trainer.model)]
        with tqdm(total=recipe.epochs, desc=f"expert {index + 1}/{recipe.num_experts} {recipe.arch}", unit="epoch",
                  disable=not progress, leave=False) as bar:

            def snapshot(stats: EpochStats, snapshots=snapshots, bar=bar) -> None:
                snapshots.append(flat_parameters(trainer.model))
                bar.update()
                bar.set_postfix(loss=f"{stats.loss:.4f}", train_acc=f"{100 * stats.accuracy:.2f}%")

            trainer.train(train_set, seed, progress=snapshot)
        accuracy = trainer.accuracy(data.test) if data.test is not None else None
        staging = path.with_name(f".{path.name}.tmp")
        save_file({"trajectory": torch.stack(snapshots).contiguous()}, str(staging),
                  metadata={"seed": str(seed), "test_accuracy": str(accuracy)})
        os.replace(staging, path)
        records[index] = {"index": index, "file": path.name, "seed": seed,
                          "test_accuracy": None if accuracy is None else round(accuracy, 6)}
        logger.info("expert %d/%d: test accuracy %s", index + 1, recipe.num_experts,
                    "n/a" if accuracy is None else f"{100 * accuracy:.2f} %")
        _write_index(folder, recipe, data, dataset_id, names, transform, records, finished=False)
        if on_expert is not None:
            on_expert(index, accuracy)
    _write_index(folder, recipe, data, dataset_id, names, transform, records, finished=True)
    (folder / "README.md").write_text(experts_card(recipe, dataset_id, data, records, transform))
    return folder


def _recipe_record(recipe: ExpertRecipe) -> dict:
    return asdict(recipe)


def _write_index(folder: Path, recipe: ExpertRecipe, data: ImageClassificationData, dataset_id: str,
                 names: list, transform: ZCAWhitening | None, records: dict, finished: bool) -> None:
    index = {"format": FORMAT if finished else f"{FORMAT} (in progress)", "dataset": dataset_id,
             "train_subset": data.train_subset or "all",
             "arch": recipe.arch, "num_classes": data.num_classes, "image_shape": list(data.image_shape),
             "normalization": {"mean": list(data.mean), "std": list(data.std)},
             "parameters": names, "num_params": sum(_numel(shape) for _, shape in names),
             "recipe": _recipe_record(recipe), "zca": None if transform is None else transform.describe(),
             "experts": [records[i] for i in sorted(records)]}
    staging = folder / f".{INDEX_FILE}.tmp"
    staging.write_text(json.dumps(index, indent=2))
    os.replace(staging, folder / INDEX_FILE)


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def experts_card(recipe: ExpertRecipe, dataset_id: str, data: ImageClassificationData, records: dict,
                 transform: ZCAWhitening | None) -> str:
    """A model card: what the trajectories are, how they were trained, each expert's test accuracy."""
    from huggingface_hub import ModelCard, ModelCardData

    accuracies = [r["test_accuracy"] for r in records.values() if r["test_accuracy"] is not None]
    mean = f"{100 * sum(accuracies) / len(accuracies):.2f} %" if accuracies else "not measured"
    card_data = ModelCardData(license=data.license or "other", datasets=[dataset_id],
                              tags=["cmidd-hf", "dataset-distillation", "mtt-expert-trajectories"],
                              training={**_recipe_record(recipe), "experts": len(records)})
    rows = "\n".join(f"| {r['index']} | {r['seed']} | {_percent(r['test_accuracy'])} |"
                     for r in (records[i] for i in sorted(records)))
    body = f"""# {dataset_id} {recipe.arch} expert trajectories

{len(records)} `{recipe.arch}` networks trained on `{dataset_id}` for {recipe.epochs} epochs, parameters saved
before training and after every epoch, for trajectory matching (MTT) with `cmidd-hf`
(`experts: hf-hub:<this repo>` in a `recipes/distill_mtt.py` config).

- Recipe (MTT `buffer.py`): SGD lr {recipe.lr} (constant), momentum {recipe.momentum}, weight decay
  {recipe.weight_decay}, batch {recipe.batch_size}, augmentation `{recipe.resolved_augmentation(data.name)}`.
- Data: {'ZCA-whitened (eps ' + str(transform.eps) + ', `zca.safetensors`)' if transform else 'normalized'}
  images, mean {list(data.mean)}, std {list(data.std)}.
- Mean test accuracy of the experts: {mean}.

| expert | seed | test accuracy (%) |
|---|---|---|
{rows}
"""
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


def _percent(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{100 * accuracy:.2f}"


def push_experts(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None):
    """Push a finished experts folder as a model repo (index, trajectories, ZCA, card; nothing else)."""
    ExpertTrajectories(folder)  # refuses unfinished or incomplete folders
    return push_artifact(folder, repo_id, EXPERT_PATTERNS, "experts", private=private, token=token)


def resolve_experts(spec: str | Mapping, data: ImageClassificationData, cache_dir: str | os.PathLike,
                    dataset_id: str, progress: bool = True, compile: bool = True) -> ExpertTrajectories:
    """Experts of ``spec`` (``local-dir:``/``hf-hub:`` or ``{"train": {...}}``, trained once into ``cache_dir``,
    with ``torch.compile`` unless ``compile`` is False), checked against ``data``."""
    if isinstance(spec, Mapping):
        if set(spec) != {"train"}:
            raise ExpertError(f"an experts mapping must be {{'train': {{...}}}}, got keys {sorted(spec)}")
        recipe = ExpertRecipe.from_mapping(spec["train"] or {})

        def complete(folder: Path) -> bool:
            try:
                return ExpertTrajectories(folder).num_experts == recipe.num_experts
            except ExpertError:
                return False

        def build(staging: Path) -> None:
            train_experts(recipe, data, staging, dataset_id, compile=compile, progress=progress)

        key = recipe.cache_key(training_data_key(dataset_id, data.train_subset))
        folder = cached_or_built(cache_dir, key, build, complete)
        experts = ExpertTrajectories(folder, {"name": "train", "path": str(folder), "recipe": asdict(recipe)})
    else:
        experts = ExpertTrajectories.from_spec(str(spec))
    experts.check_fits(data)
    return experts
