"""Coreset baselines — the first rows of every distillation table: ``ipc`` real images chosen per class.

* ``random``: a seeded class-balanced random subset;
* ``herding`` (Welling 2009): greedily add the image that keeps the running mean of the chosen embeddings
  closest to the class mean;
* ``k-center`` (Sener & Savarese 2018): greedy farthest-point selection — start from the image closest to the
  class mean, then repeatedly add the image farthest from everything chosen;
* ``forgetting`` (Toneva et al. 2019): train a network on the whole training set for a few epochs, count each
  image's forgetting events (correct, then wrong, on its next visit; never learned counts as always
  forgotten) and keep the ``ipc`` images of each class forgotten least often (ties broken by a seeded draw).

Herding and k-center work in the penultimate-feature space of a *trained* network (a proxy, see
:mod:`cmidd_hf.artifacts.proxies`): a random network's features mostly encode brightness and texture, while both
methods are meant to cover the class's semantic distribution, as in the DC benchmark, which uses a trained
ConvNet.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loading import RealImageStore
from ..engine.precision import autocast, resolve_precision
from ..engine.seeding import generator
from ..models import build_network, embed

CORESET_METHODS = ("random", "herding", "k-center", "forgetting")


@torch.no_grad()
def embed_store(model: nn.Module, store: RealImageStore, positions: torch.Tensor, device=None,
                batch_size: int = 500) -> torch.Tensor:
    """Penultimate features ([n, d] float32) of the images at ``positions``, in eval mode."""
    device = torch.device(device or "cpu")
    model.eval()
    chunks = [embed(model, store.images(positions[i:i + batch_size], device)).float().cpu()
              for i in range(0, len(positions), batch_size)]
    return torch.cat(chunks)


def herding(features: torch.Tensor, k: int) -> list[int]:
    """Indices (rows of ``features``) chosen by herding, in the order they were chosen."""
    mean = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mean)
    available = torch.ones(len(features), dtype=torch.bool)
    for t in range(1, k + 1):
        distance = ((mean - (running + features) / t) ** 2).sum(1)
        distance[~available] = float("inf")
        i = int(distance.argmin())
        chosen.append(i)
        running += features[i]
        available[i] = False
    return chosen


def k_center(features: torch.Tensor, k: int) -> list[int]:
    """Indices chosen by greedy farthest-point selection, starting from the point nearest the mean."""
    first = int(((features - features.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    nearest = ((features - features[first]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, ((features - features[i]) ** 2).sum(1))
    return chosen


def forgetting_counts(store: RealImageStore, arch: str = "convnet3", epochs: int = 3, seed: int = 0,
                      batch_size: int = 256, lr: float = 0.01, device=None, precision: str = "auto") -> torch.Tensor:
    """Forgetting events per training image ([N] float; ``inf`` for images never classified correctly).

    Correctness is read on each image's forward pass within its minibatch, before the update, as Toneva et al.
    """
    device = torch.device(device or "cpu")
    precision = resolve_precision(precision, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(arch, store.num_classes, store.image_shape[0], store.image_shape[1:]).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    n = len(store)
    previous = torch.zeros(n, dtype=torch.bool)
    ever_correct = torch.zeros(n, dtype=torch.bool)
    counts = torch.zeros(n)
    rng = generator(seed, "forgetting")
    net.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=rng)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x, y = store.images(idx, device), store.labels[idx].to(device)
            with autocast(device, precision):
                logits = net(x)
            correct = (logits.argmax(1) == y).cpu()
            counts[idx] += (previous[idx] & ~correct).float()
            previous[idx], ever_correct[idx] = correct, ever_correct[idx] | correct
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    counts[~ever_correct] = float("inf")
    return counts


def select_coreset(
    store: RealImageStore,
    ipc: int,
    method: str,
    seed: int = 0,
    embedding_model: nn.Module | None = None,
    forgetting_epochs: int = 3,
    forgetting_batch_size: int = 256,
    device=None,
) -> torch.Tensor:
    """Positions in ``store`` of ``ipc`` images per class, class-sorted (class 0 first)."""
    if method not in CORESET_METHODS:
        raise ValueError(f"unknown coreset method={method!r}; choose one of {list(CORESET_METHODS)}")
    if method in ("herding", "k-center") and embedding_model is None:
        raise ValueError(f"{method} needs embedding_model (a trained network, e.g. a proxy)")
    counts = forgetting_counts(store, epochs=forgetting_epochs, seed=seed, batch_size=forgetting_batch_size,
                               device=device) if method == "forgetting" else None
    chosen = []
    for c in range(store.num_classes):
        positions = torch.nonzero(store.labels == c).flatten()
        if ipc > len(positions):
            raise ValueError(f"ipc={ipc} exceeds the {len(positions)} images of class {c}")
        if method == "random":
            picked = positions[torch.randperm(len(positions), generator=generator(seed, "coreset", c))[:ipc]]
        elif method == "forgetting":
            tie_break = torch.rand(len(positions), generator=generator(seed, "coreset", c))
            order = sorted(range(len(positions)), key=lambda i: (float(counts[positions[i]]), float(tie_break[i])))
            picked = positions[order[:ipc]]
        else:
            features = embed_store(embedding_model, store, positions, device)
            select = herding if method == "herding" else k_center
            picked = positions[select(features, ipc)]
        chosen.append(picked)
    return torch.cat(chosen)
