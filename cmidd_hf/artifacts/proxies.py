"""Pre-trained proxy networks for the CMI term: load once, keep in memory, eval(), frozen.

A proxy spec is one of

* a timm name (``"resnet18.a1_in1k"``: timm's pretrained weights), ``"hf-hub:org/name[@revision]"`` or
  ``"local-dir:/path"`` (timm Hub format, e.g. written by ``scripts/pretrain_proxies.py``);
* a collection of K proxy repos as one entry with a numeric range: ``"hf-hub:org/cifar10-proxy-{0..3}"`` is
  ``org/cifar10-proxy-0`` ... ``org/cifar10-proxy-3`` (what ``pretrain_proxies.py --push_to_hub`` creates);
* ``"transformers:org/name"``: a ``transformers`` image classifier; its feature is the pooled last hidden state;
* a mapping ``{"train": {...}}``: K proxies trained on the real training split the first time and cached
  (``arch``, ``count``, ``epochs``, ``lr``, ``momentum``, ``weight_decay``, ``batch_size``, ``seed``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.models import save_for_hf

from ..data.loading import ImageClassificationData
from ..evaluation.protocols import EvalProtocol
from ..evaluation.trainer import EpochStats, NetworkTrainer, StoreSet
from .resolver import (
    ArtifactError,
    cached_or_built,
    is_folder_spec,
    push_artifact,
    resolve_artifact,
    sha256_file,
    training_data_key,
    write_atomically,
)

logger = logging.getLogger(__name__)


class ProxyError(ArtifactError):
    """A proxy that cannot be loaded or does not fit the dataset."""


@dataclass(frozen=True)
class ProxyTrainingSpec:
    """How proxies are pre-trained (defaults: the official recipe, method-spec §2)."""

    arch: str = "resnet18_cifar"
    count: int = 4
    epochs: int = 40
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-3
    batch_size: int = 256
    seed: int = 0

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> ProxyTrainingSpec:
        unknown = set(mapping) - set(cls.__dataclass_fields__)
        if unknown:
            raise ProxyError(f"unknown keys {sorted(unknown)} in a proxy train: spec; "
                             f"known: {sorted(cls.__dataclass_fields__)}")
        spec = cls(**mapping)
        if spec.count < 1 or spec.epochs < 1:
            raise ProxyError(f"a proxy train: spec needs count >= 1 and epochs >= 1, got {spec}")
        return spec

    def protocol(self) -> EvalProtocol:
        """Constant lr, no augmentation, as the official proxy pre-training."""
        return EvalProtocol("proxy", self.epochs, self.lr, self.momentum, self.weight_decay, self.batch_size,
                            milestones=(), augmentation=None)

    def cache_key(self, dataset: str) -> str:
        return f"{dataset}-{self.arch}-e{self.epochs}-lr{self.lr}-wd{self.weight_decay}-b{self.batch_size}-s{self.seed}"


class TransformersProxy(nn.Module):
    """A transformers image classifier behind the timm feature API (features = pooled last hidden state)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_classes = model.config.num_labels

    def forward_features(self, x: torch.Tensor):
        return self.model(pixel_values=x, output_hidden_states=True)

    def forward_head(self, outputs, pre_logits: bool = False) -> torch.Tensor:
        if not pre_logits:
            return outputs.logits
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = outputs.hidden_states[-1]
        return hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden.mean(dim=1)


def _load_one(spec: str) -> tuple[nn.Module, dict]:
    """The proxy of ``spec`` and its provenance (repo id and commit, or path; sha256 of the weights)."""
    try:
        if spec.startswith("transformers:"):
            from transformers import AutoModelForImageClassification

            model = AutoModelForImageClassification.from_pretrained(spec[len("transformers:"):])
            return TransformersProxy(model), {"name": spec, "repo_id": spec[len("transformers:"):],
                                              "revision": getattr(model.config, "_commit_hash", None)}
        if is_folder_spec(spec):
            resolved = resolve_artifact(spec, ("config.json", "model.safetensors"), "proxy", PROXY_FILES)
            model = timm.create_model(f"local-dir:{resolved.folder}", pretrained=True)
            return model, {**resolved.provenance, "sha256": sha256_file(resolved.folder / "model.safetensors")}
        if not timm.is_model(spec):
            raise ProxyError(f"unknown proxy {spec!r}: not a timm model name, 'hf-hub:org/name', "
                             "'local-dir:/path' or 'transformers:org/name'")
        return timm.create_model(spec, pretrained=True), {"name": spec}
    except ProxyError:
        raise
    except ArtifactError as err:
        raise ProxyError(str(err)) from None
    except Exception as err:  # timm/hub raise many types; re-raise with the spec named
        raise ProxyError(f"proxy {spec!r} could not be loaded: {type(err).__name__}: {err}") from err


def train_proxy(
    spec: ProxyTrainingSpec, data: ImageClassificationData, index: int, device=None, progress: bool = True,
    log_epochs: bool = False,
) -> tuple[nn.Module, float | None]:
    """Train proxy number ``index`` of ``spec`` (seed ``spec.seed + index``); returns it and its test accuracy.

    The bar shows each epoch's training loss and accuracy; ``log_epochs`` also logs them, one line per epoch
    (for long stand-alone pre-training runs, as the official script prints)."""
    trainer = NetworkTrainer(spec.arch, data.num_classes, data.image_shape, spec.protocol(), device,
                             precision="auto", compile=False)
    from tqdm.auto import tqdm

    with tqdm(total=spec.epochs, desc=f"proxy {index + 1}/{spec.count} {spec.arch}", unit="epoch",
              disable=not progress, leave=False) as bar:

        def report(stats: EpochStats) -> None:
            bar.update()
            bar.set_postfix(loss=f"{stats.loss:.4f}", train_acc=f"{100 * stats.accuracy:.2f}%")
            if log_epochs:
                logger.info("proxy %d epoch %d/%d: train loss %.4f, train accuracy %.2f %%", index,
                            stats.epoch, spec.epochs, stats.loss, 100 * stats.accuracy)

        trainer.train(StoreSet(data.train, None, trainer.device), spec.seed + index, progress=report)
    accuracy = trainer.accuracy(data.test) if data.test is not None else None
    model = trainer.model.to(memory_format=torch.contiguous_format).cpu().eval()
    return model, accuracy


def save_proxy(model: nn.Module, out_dir: str | os.PathLike, data: ImageClassificationData,
               spec: ProxyTrainingSpec, index: int, accuracy: float | None, dataset_id: str) -> Path:
    """Save a proxy in timm Hub format (config.json, model.safetensors, README model card), atomically.

    The card's YAML holds ``model-index`` (test accuracy) and the training recipe (``training:``); no pickle.
    """
    return write_atomically(Path(out_dir), lambda staging: write_proxy_files(model, staging, data, spec, index,
                                                                             accuracy, dataset_id))


def write_proxy_files(model: nn.Module, folder: Path, data: ImageClassificationData, spec: ProxyTrainingSpec,
                      index: int, accuracy: float | None, dataset_id: str) -> None:
    """The files of a saved proxy, written into ``folder`` (see :func:`save_proxy`)."""
    save_for_hf(
        model, folder, safe_serialization=True,
        model_config={"label_names": list(data.class_names)},
        model_args={"num_classes": model.num_classes, "in_chans": data.channels, "img_size": list(data.image_size)},
        data_config={"input_size": list(data.image_shape), "mean": list(data.mean), "std": list(data.std),
                     "crop_pct": 1.0, "interpolation": "bilinear"},
    )
    (folder / "README.md").write_text(proxy_model_card(spec, index, accuracy, dataset_id, data))


def push_proxy(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None):
    """Push a saved proxy as a timm model repo: ``create_repo`` + one commit of config.json, model.safetensors
    and README.md (nothing else; no pickle). ``token``: None uses ``HF_TOKEN`` or the login token."""
    folder = Path(folder)
    missing = [name for name in PROXY_FILES if not (folder / name).is_file()]
    if missing:
        raise ProxyError(f"{folder} is not a saved proxy: {missing} missing (save it with save_proxy)")
    return push_artifact(folder, repo_id, PROXY_FILES, "proxy", private=private, token=token)


def proxy_model_card(spec: ProxyTrainingSpec, index: int, accuracy: float | None, dataset_id: str,
                     data: ImageClassificationData) -> str:
    """A timm model card whose ``model-index`` records the proxy's test accuracy."""
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import EvalResult

    name = f"{data.name}-{spec.arch}-proxy-{index}"
    results = []
    if accuracy is not None:
        results = [EvalResult(task_type="image-classification", dataset_type=dataset_id, dataset_name=data.name,
                              dataset_split="test", metric_type="accuracy", metric_value=round(accuracy, 6))]
    card_data = ModelCardData(library_name="timm", license=data.license or "other",
                              tags=["image-classification", "timm", "cmidd-hf", "dataset-distillation-proxy"],
                              datasets=[dataset_id], model_name=name, eval_results=results or None,
                              training={**asdict(spec), "index": index, "seed": spec.seed + index,
                                        "no_augmentation": True, "train_subset": data.train_subset or "all"})
    accuracy_text = f"{100 * accuracy:.2f} %" if accuracy is not None else "not measured"
    body = f"""# {name}

A proxy network for the class-aware CMI regularizer of [CMIDD](https://github.com/ndhg1213/CMIDD)-style
dataset distillation with `cmidd-hf`: `{spec.arch}` trained on `{dataset_id}` (training images:
{data.train_subset or "the whole training split"}; seed {spec.seed + index}).
License: that of the training data (`{data.license or "see the dataset card"}`).

- Test accuracy: {accuracy_text}
- Training: SGD lr {spec.lr} (constant), momentum {spec.momentum}, weight decay {spec.weight_decay},
  batch {spec.batch_size}, {spec.epochs} epochs, no augmentation, normalized inputs
  (mean {list(data.mean)}, std {list(data.std)}).

```python
import timm, cmidd_hf  # importing cmidd_hf registers {spec.arch} with timm
model = timm.create_model("hf-hub:<this repo>", pretrained=True)
```

In a cmidd-hf recipe: `proxies: ["hf-hub:<this repo>"]`, or all K proxies of this series as one entry with a
range, e.g. `"hf-hub:<org>/{name.rsplit("-", 1)[0]}-{{0..{spec.count - 1}}}"`.
"""
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


PROXY_FILES = ("config.json", "model.safetensors", "README.md")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_specs(specs: Sequence[str | Mapping]) -> list[str | Mapping]:
    """Expand numeric ranges: ``"hf-hub:org/p-{0..3}"`` -> the four repos ``org/p-0`` ... ``org/p-3``."""
    out: list[str | Mapping] = []
    for spec in specs:
        match = _RANGE.search(spec) if isinstance(spec, str) else None
        if match is None:
            out.append(spec)
            continue
        first, last = int(match.group(1)), int(match.group(2))
        if last < first:
            raise ProxyError(f"proxy range {match.group()} in {spec!r} is empty; write {{first..last}}")
        out += expand_specs([spec[:match.start()] + str(k) + spec[match.end():] for k in range(first, last + 1)])
    return out


class ProxyPool(Sequence[nn.Module]):
    """A list of frozen proxies checked against a dataset (channels, image size, classes)."""

    def __init__(self, proxies: Sequence[nn.Module], names: Sequence[str],
                 provenance: Sequence[dict] | None = None) -> None:
        self.proxies = [p.eval().requires_grad_(False) for p in proxies]
        self.names = list(names)
        self.provenance = list(provenance) if provenance is not None else [{"name": n} for n in self.names]
        """One record per proxy: name, and repo id + commit (Hub) or path, with the sha256 of the weights."""

    def __len__(self) -> int:
        return len(self.proxies)

    def __getitem__(self, index):
        return self.proxies[index]

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.proxies)

    @classmethod
    def from_pretrained(
        cls,
        specs: Sequence[str | Mapping],
        data: ImageClassificationData | None = None,
        cache_dir: str | os.PathLike = "outputs/proxy-cache",
        dataset_id: str | None = None,
        device=None,
        progress: bool = True,
    ) -> ProxyPool:
        """Load (or train once and cache) every proxy of ``specs`` and check it against ``data``."""
        if not specs:
            raise ProxyError("no proxies given: list at least one proxy (a name, hf-hub:, local-dir:, "
                             "transformers: or a train: spec)")
        models, names, records = [], [], []
        for spec in expand_specs(specs):
            if isinstance(spec, Mapping):
                if set(spec) != {"train"}:
                    raise ProxyError(f"a proxy mapping must be {{'train': {{...}}}}, got keys {sorted(spec)}")
                if data is None:
                    raise ProxyError("a train: proxy spec needs the dataset to train on")
                for name, (model, record) in cached_or_trained(ProxyTrainingSpec.from_mapping(spec["train"] or {}),
                                                               data, Path(cache_dir), dataset_id or data.name, device,
                                                               progress):
                    models.append(model)
                    names.append(name)
                    records.append(record)
            else:
                model, record = _load_one(str(spec))
                models.append(model)
                names.append(str(spec))
                records.append(record)
        pool = cls(models, names, records)
        if data is not None:
            pool.check(data)
        return pool

    def check(self, data: ImageClassificationData) -> None:
        """Fail clearly if a proxy cannot take this dataset's images or was trained on other classes."""
        probe = torch.zeros(2, *data.image_shape)
        for name, proxy in zip(self.names, self.proxies, strict=True):
            classes = getattr(proxy, "num_classes", None)
            if classes is not None and classes != data.num_classes:
                raise ProxyError(f"proxy {name!r} has {classes} classes but dataset {data.name!r} has "
                                 f"{data.num_classes}; use proxies trained on this dataset")
            try:
                with torch.no_grad():
                    features = proxy.forward_head(proxy.forward_features(probe.to(_device_of(proxy))),
                                                  pre_logits=True)
            except Exception as err:
                raise ProxyError(f"proxy {name!r} does not accept {data.name!r} images of shape "
                                 f"{tuple(data.image_shape)}: {type(err).__name__}: {err}") from err
            if features.dim() != 2:
                raise ProxyError(f"proxy {name!r} gives features of shape {tuple(features.shape)}, expected [N, d]")

    def to(self, device) -> ProxyPool:
        self.proxies = [p.to(device) for p in self.proxies]
        return self


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def cached_or_trained(spec: ProxyTrainingSpec, data: ImageClassificationData, cache_dir: Path, dataset_id: str,
                      device=None, progress: bool = True) -> list[tuple[str, tuple[nn.Module, dict]]]:
    """Proxies of ``spec``: loaded from ``cache_dir`` when present, else trained, saved there, and loaded.

    Each proxy is trained under a file lock (:func:`cached_or_built`), so runs sharing a cache side by side train
    it once, and a finished one is read without the lock (read-only caches work).
    """
    out = []
    root = cache_dir / spec.cache_key(training_data_key(dataset_id, data.train_subset))
    for index in range(spec.count):
        def train(staging: Path, index: int = index) -> None:
            model, accuracy = train_proxy(spec, data, index, device, progress)
            write_proxy_files(model, staging, data, spec, index, accuracy, dataset_id)
            logger.info("trained proxy %d of %s: test accuracy %s", index, root, accuracy)

        folder = cached_or_built(root, f"proxy-{index}", train, lambda f: (f / "model.safetensors").exists())
        out.append((f"local-dir:{folder}", _load_one(f"local-dir:{folder}")))
    return out
