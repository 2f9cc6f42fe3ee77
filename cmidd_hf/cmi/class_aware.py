"""The class-aware conditional mutual information (CMI) of a labelled set, and the CMIDD regularizer.

For samples with proxy outputs z_i and labels y_i (method-spec §1):

    P_i = softmax(z_i) over the feature axis,   Q_c = mean of P_i over the samples of class c,
    CMI = mean_i KL(P_i || Q_{y_i})  (nats)  =  sum_c n_c/N * [H(Q_c) - mean_{i in c} H(P_i)].

Everything is computed in float32 and in log space, so bf16 features and near-zero probabilities are safe.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..engine.precision import autocast, check_precision, resolve_precision
from ..engine.seeding import generator

Reduction = Literal["mean", "sum", "per_class"]


def _log_class_centroids(log_p: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log Q_c = log mean_{i in c} P_i for every class, as a stable per-class log-sum-exp.

    Rows of absent classes are filled with zeros (they are never indexed).
    """
    dim = log_p.shape[1]
    index = labels[:, None].expand(-1, dim)
    class_max = torch.full((num_classes, dim), float("-inf"), dtype=log_p.dtype, device=log_p.device)
    class_max = class_max.scatter_reduce(0, index, log_p.detach(), reduce="amax", include_self=True)
    class_max = torch.where(torch.isfinite(class_max), class_max, torch.zeros_like(class_max))
    shifted = torch.exp(log_p - class_max[labels])
    sums = torch.zeros((num_classes, dim), dtype=log_p.dtype, device=log_p.device).index_add(0, labels, shifted)
    counts = torch.bincount(labels, minlength=num_classes).to(log_p.dtype)
    present = counts > 0
    log_q = class_max + torch.log(sums.clamp_min(torch.finfo(log_p.dtype).tiny)) - torch.log(
        counts.clamp_min(1.0)
    )[:, None]
    return torch.where(present[:, None], log_q, torch.zeros_like(log_q))


def class_centroids(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Q_c = mean of softmax(features_i) over the samples of class c, shape [num_classes, d].

    Use it to build fixed centroids (e.g. from real data) for :func:`class_aware_cmi`.
    """
    labels = labels.long()
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    log_p = F.log_softmax(features.float(), dim=1)
    return _log_class_centroids(log_p, labels, num_classes).exp()


def class_aware_cmi(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    centroids: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Class-aware CMI of a labelled set, in nats.

    Args:
        features: [N, d] proxy outputs (penultimate features or logits); softmax is taken over d.
        labels: [N] integer class labels.
        num_classes: number of classes C (default: max label + 1; needed for "per_class" when the
            last classes are absent).
        centroids: optional fixed [C, d] class centroids Q_c (probability rows, e.g. from real data);
            by default Q_c is the mean of P_i over the class's own samples.
        reduction: "mean" (mean over samples of KL(P_i || Q_{y_i}), the paper's estimate),
            "sum" (sum over samples; divide by a global count when the set is split across processes),
            or "per_class" ([C] vector of per-class means; 0 for classes absent from ``labels``).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [N, d], got shape {tuple(features.shape)}")
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must be [N]={features.shape[0]}, got shape {tuple(labels.shape)}")
    if reduction not in ("mean", "sum", "per_class"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'per_class', got {reduction!r}")
    labels = labels.long()
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
    log_p = F.log_softmax(features.float(), dim=1)
    if centroids is None:
        log_q = _log_class_centroids(log_p, labels, num_classes)
    else:
        if centroids.shape != (num_classes, features.shape[1]):
            raise ValueError(
                f"centroids must be [num_classes={num_classes}, d={features.shape[1]}], "
                f"got {tuple(centroids.shape)}"
            )
        log_q = torch.log(centroids.float().clamp_min(torch.finfo(torch.float32).tiny))
    kl = (log_p.exp() * (log_p - log_q[labels])).sum(dim=1)
    if reduction == "mean":
        return kl.mean()
    if reduction == "sum":
        return kl.sum()
    counts = torch.bincount(labels, minlength=num_classes).to(kl.dtype)
    per_class = torch.zeros(num_classes, dtype=kl.dtype, device=kl.device).index_add(0, labels, kl)
    return per_class / counts.clamp_min(1.0)


@torch.no_grad()
def dataset_cmi(
    images: torch.Tensor,
    labels: torch.Tensor,
    proxies: Sequence[nn.Module],
    space: Literal["feature", "probability"] = "feature",
    num_classes: int | None = None,
    batch_size: int = 500,
) -> list[float]:
    """The class-aware CMI of a whole labelled image set under each proxy (one value per proxy, nats).

    ``images`` are normalized as the proxies expect. The proxy forward runs in batches of ``batch_size`` on
    the proxy's device; the CMI itself is computed over the whole set (centroids need every sample). This is
    what the distillation logs, the dataset card and the ``class_aware_cmi`` evaluate metric report.
    """
    if space not in ("feature", "probability"):
        raise ValueError(f"space must be 'feature' or 'probability', got {space!r}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    labels = labels.long().cpu()
    values = []
    for proxy in proxies:
        was_training = proxy.training
        proxy.eval()
        parameter = next(proxy.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        outputs = [proxy.forward_head(proxy.forward_features(images[i:i + batch_size].to(device).float()),
                                      pre_logits=space == "feature").float().cpu()
                   for i in range(0, len(images), batch_size)]
        proxy.train(was_training)
        values.append(float(class_aware_cmi(torch.cat(outputs), labels, num_classes=num_classes)))
    return values


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


class CMIRegularizer(nn.Module):
    """λ · class-aware CMI of the synthetic set under a randomly drawn pre-trained proxy.

    The proxy of a call is drawn from (seed, step) alone, so every process and every resumed run draws
    the same one. Feed it the normalized, un-augmented synthetic images.

    Args:
        proxies: the proxy pool (timm-style modules with ``forward_features``/``forward_head``);
            put in ``eval()`` and frozen here.
        weight: λ (>= 0).
        space: "feature" (softmax over penultimate features, the paper's default) or "probability"
            (softmax over logits).
        normalization: "global" (mean over all synthetic samples; official DM/DSA) or "per_class"
            (sum over classes of per-class means; official IDC).
        every: compute the term every ``every`` steps (0 is returned on the others).
        class_chunk_size: classes per proxy forward; each chunk's activations are recomputed in
            backward (the paper's A.4 per-class computation: same value, bounded memory). None = all.
        seed: seed of the proxy draws.
        precision: "fp32"; "bf16" to run the proxy forward under bf16 autocast; "auto" for bf16 only on
            devices with native bf16 (the CMI itself is always computed in float32 from the features).
        compile: run the proxies' forward (and so its backward) through ``torch.compile``, channels-last, as the
            methods' networks run when a recipe compiles: one graph per image shape, shared by every proxy of an
            architecture (their weights are its inputs). On an AVX2-only CPU (fp32) this took the ResNet-18 term
            on 100 CIFAR-shaped images from 1.84 to 1.44 s.
    """

    def __init__(
        self,
        proxies: Sequence[nn.Module],
        weight: float,
        space: Literal["feature", "probability"] = "feature",
        normalization: Literal["global", "per_class"] = "global",
        every: int = 1,
        class_chunk_size: int | None = None,
        seed: int = 0,
        precision: Literal["auto", "fp32", "bf16"] = "fp32",
        compile: bool = False,
    ) -> None:
        super().__init__()
        if len(proxies) == 0:
            raise ValueError("CMIRegularizer needs at least one proxy network (proxies=[])")
        if weight < 0:
            raise ValueError(f"CMI weight (lambda) must be >= 0, got {weight}")
        if space not in ("feature", "probability"):
            raise ValueError(f"space must be 'feature' or 'probability', got {space!r}")
        if normalization not in ("global", "per_class"):
            raise ValueError(f"normalization must be 'global' or 'per_class', got {normalization!r}")
        check_precision(precision)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if class_chunk_size is not None and class_chunk_size < 1:
            raise ValueError(f"class_chunk_size must be >= 1 or None, got {class_chunk_size}")
        self.proxies = nn.ModuleList(_freeze(p) for p in proxies)
        self.memory_format = torch.channels_last if compile else torch.contiguous_format
        if compile:
            self.proxies.to(memory_format=self.memory_format)
        self._embed = torch.compile(self._embed_eager, dynamic=False) if compile else self._embed_eager
        self.weight = float(weight)
        self.space = space
        self.normalization = normalization
        self.every = every
        self.class_chunk_size = class_chunk_size
        self.seed = seed
        self.precision = precision
        self._warned_single_sample = False

    def train(self, mode: bool = True) -> CMIRegularizer:
        """Proxies stay in eval mode whatever the caller does (BatchNorm proxies must not adapt)."""
        super().train(mode)
        self.proxies.eval()
        return self

    def proxy_index(self, *draw: int) -> int:
        """Index of the proxy of a draw key (the step; IDC: step and image step): a pure function of
        (seed, draw)."""
        return int(torch.randint(len(self.proxies), (1,), generator=generator(self.seed, "cmi-proxy", *draw)))

    def is_active(self, step: int) -> bool:
        return self.weight > 0 and step % self.every == 0

    def embed(self, proxy: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The proxy output the CMI is measured on: penultimate features or logits."""
        return self._embed(proxy, images.contiguous(memory_format=self.memory_format),
                           resolve_precision(self.precision, images.device))

    def _embed_eager(self, proxy: nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
        with autocast(images.device, precision):
            feature_map = proxy.forward_features(images)
            return proxy.forward_head(feature_map, pre_logits=self.space == "feature")

    def _features(self, proxy: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.class_chunk_size is None:
            return self.embed(proxy, images), labels
        classes = torch.unique(labels)
        outputs, chunk_labels = [], []
        for start in range(0, len(classes), self.class_chunk_size):
            mask = torch.isin(labels, classes[start : start + self.class_chunk_size])
            chunk = images[mask]
            if chunk.requires_grad:
                outputs.append(checkpoint(self.embed, proxy, chunk, use_reentrant=False))
            else:
                outputs.append(self.embed(proxy, chunk))
            chunk_labels.append(labels[mask])
        return torch.cat(outputs), torch.cat(chunk_labels)

    def cmi(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, num_classes: int | None = None,
        total_samples: int | None = None, draw: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """The (unweighted) CMI of ``images`` under the proxy of ``step``, normalized as configured.

        ``total_samples`` is the size of the whole synthetic set when ``images`` is one process's shard of
        classes: the "global" value is then this shard's share of the exact global mean.
        """
        labels = labels.long()
        counts = torch.bincount(labels)
        if counts.numel() and int(counts[counts > 0].min()) < 2 and not self._warned_single_sample:
            warnings.warn(
                "A class has a single synthetic sample: its class-aware CMI is identically 0 "
                "(nothing to pull toward the class centre). The CMI term has no effect for that class.",
                stacklevel=2,
            )
            self._warned_single_sample = True
        proxy = self.proxies[self.proxy_index(*(draw or (step,)))]
        features, labels = self._features(proxy, images, labels)
        if self.normalization == "per_class":
            num_classes = num_classes or int(labels.max()) + 1
            return class_aware_cmi(features, labels, num_classes, reduction="per_class").sum()
        total = labels.numel() if total_samples is None else total_samples
        return class_aware_cmi(features, labels, reduction="sum") / total

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, num_classes: int | None = None,
        total_samples: int | None = None, draw: tuple[int, ...] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(λ·CMI, {"cmi": CMI}) at ``step``; (a zero tensor, {}) on skipped steps (the Regularizer protocol)."""
        if not self.is_active(step):
            return images.new_zeros(()), {}
        value = self.cmi(images, labels, step, num_classes=num_classes, total_samples=total_samples, draw=draw)
        return self.weight * value, {"cmi": float(value.detach())}
