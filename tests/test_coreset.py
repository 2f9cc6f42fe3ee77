"""Coreset baselines: herding and k-center by hand, forgetting counts, selection layout, the script."""

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from cmidd_hf import load_image_classification, load_synthetic
from cmidd_hf.methods.coreset import forgetting_counts, herding, k_center, select_coreset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist():
    return load_image_classification("mnist-5k")


def test_herding_by_hand():
    features = torch.tensor([[0.0], [10.0], [4.0], [6.0], [5.0]])  # mean 5
    # 5 first; then 4 or 6 keep the mean at 4.5/5.5 (tie -> lower index: 4); then 6 brings it back to 5
    assert herding(features, 3) == [4, 2, 3]


def test_k_center_by_hand():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 10.0], [5.0, 5.0]])
    # nearest the mean (3.2, 3) is (5, 5); farthest from it (0, 0) (tie, lowest index); then (10, 0)
    assert k_center(features, 3) == [4, 0, 2]


def test_forgetting_counts_and_selection(mnist):
    store = mnist.train.subset(mnist.train.balanced_subset(60, torch.Generator().manual_seed(0)))
    counts = forgetting_counts(store, epochs=2, seed=0, batch_size=64)  # as select_coreset runs it
    assert counts.shape == (len(store),) and (counts >= 0).all()
    assert counts[torch.isfinite(counts)].max() <= 1  # two visits per image: at most one forgetting event
    assert torch.isfinite(counts).float().mean() > 0.5  # most images get learned in two epochs
    positions = select_coreset(store, 3, "forgetting", seed=0, forgetting_epochs=2, forgetting_batch_size=64)
    labels = store.labels[positions]
    assert torch.equal(labels, torch.arange(10).repeat_interleave(3))
    for c in range(10):
        chosen = counts[positions[labels == c]]
        others = counts[store.labels == c]
        assert chosen.max() == torch.sort(others).values[2]  # the three least-forgotten of the class


@pytest.mark.parametrize("method", ["random", "herding", "k-center"])
def test_selection_is_class_sorted_distinct_and_seeded(mnist, method):
    from cmidd_hf import build_network

    store = mnist.train.subset(mnist.train.balanced_subset(60, torch.Generator().manual_seed(0)))
    net = build_network("convnet3", 10, 1, (28, 28))
    kwargs = {"embedding_model": net} if method != "random" else {}
    first = select_coreset(store, 4, method, seed=1, **kwargs)
    assert torch.equal(store.labels[first], torch.arange(10).repeat_interleave(4))
    assert len(set(first.tolist())) == 40
    assert torch.equal(first, select_coreset(store, 4, method, seed=1, **kwargs))
    if method == "random":
        assert not torch.equal(first, select_coreset(store, 4, method, seed=2))
    with pytest.raises(ValueError, match="unknown coreset method"):
        select_coreset(store, 4, "kmeans")


def load_script():
    spec = importlib.util.spec_from_file_location("select_coreset", ROOT / "scripts" / "select_coreset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_select_coreset_script_writes_an_evaluated_set_with_a_card(tmp_path, capsys):
    script = load_script()
    args = ["--dataset", "mnist-5k", "--ipc", "2", "--method", "herding", "--output_dir", str(tmp_path),
            "--proxy_cache_dir", str(tmp_path / "cache"), "--embedding", "convnet3_w32", "--embedding_epochs", "1",
            "--eval_arch", "convnet3_w32", "--eval_runs", "1", "--eval_epochs", "2", "--no_compile",
            "--precision", "fp32"]
    assert script.main(args) == 0
    folder = tmp_path / "mnist-5k-herding-ipc2"
    syn = load_synthetic(folder)
    assert len(syn.labels) == 20 and syn.distillation["method"] == "herding"
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    block = meta["distillation"]["default"]
    assert block["coreset"]["embedding"]["arch"] == "convnet3_w32" and len(block["results"]) == 1
    data = load_image_classification("mnist-5k")
    assert torch.equal(syn.images, data.train.images(torch.tensor(block["source_positions"])))
    assert script.main([*args[:3], "401", *args[4:]]) == 2
    assert "ipc=401 exceeds the 400" in capsys.readouterr().err
