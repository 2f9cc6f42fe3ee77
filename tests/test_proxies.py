"""Proxy pools: timm Hub-format save/load (local-dir:, hf-hub: from the cache), transformers, checks."""

import importlib.util
import json
import logging
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import yaml

from cmidd_hf import build_network, load_image_classification
from cmidd_hf.artifacts.experts import ExpertRecipe, resolve_experts
from cmidd_hf.artifacts.proxies import (
    ProxyError,
    ProxyPool,
    ProxyTrainingSpec,
    cached_or_trained,
    expand_specs,
    push_proxy,
    save_proxy,
)
from cmidd_hf.artifacts.resolver import cached_or_built

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist():
    return load_image_classification("mnist-5k")


@pytest.fixture()
def saved_proxy(mnist, tmp_path):
    torch.manual_seed(0)
    model = build_network("convnet3", 10, 1, (28, 28)).eval()
    folder = save_proxy(model, tmp_path / "proxy-0", mnist, ProxyTrainingSpec(arch="convnet3"), 0, 0.875, "mnist-5k")
    return model, folder


def test_saved_proxy_is_timm_hub_format_with_model_index(saved_proxy):
    _, folder = saved_proxy
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert meta["library_name"] == "timm" and meta["license"] == "cc-by-sa-3.0" and meta["training"]["seed"] == 0
    (result,) = meta["model-index"][0]["results"]
    assert result["metrics"][0]["value"] == 0.875 and result["dataset"]["type"] == "mnist-5k"


def test_local_dir_and_hub_cache_proxies_load_identically(saved_proxy, mnist, tmp_path, monkeypatch):
    model, folder = saved_proxy
    commit = "b" * 40
    root = tmp_path / "hub" / "models--someone--mnist-proxy"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    pool = ProxyPool.from_pretrained([f"local-dir:{folder}", "hf-hub:someone/mnist-proxy"], mnist)
    x = mnist.test.images(torch.arange(6))
    for proxy in pool:
        assert not proxy.training and not any(p.requires_grad for p in proxy.parameters())
        assert torch.equal(proxy(x), model(x))
    with pytest.raises(ProxyError, match="could not be downloaded"):
        ProxyPool.from_pretrained(["hf-hub:someone/absent"], mnist)


def test_class_count_mismatch_is_refused(mnist, tmp_path):
    other = build_network("convnet3", 7, 1, (28, 28))
    folder = save_proxy(other, tmp_path / "p7", mnist, ProxyTrainingSpec(arch="convnet3"), 0, None, "mnist-5k")
    with pytest.raises(ProxyError, match="has 7 classes but dataset"):
        ProxyPool.from_pretrained([f"local-dir:{folder}"], mnist)


def test_transformers_image_classifier_proxy(mnist, tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    ResNetForImageClassification(config).save_pretrained(tmp_path / "hf-resnet")
    pool = ProxyPool.from_pretrained([f"transformers:{tmp_path / 'hf-resnet'}"], mnist)
    proxy = pool[0]
    x = mnist.test.images(torch.arange(4))
    features = proxy.forward_head(proxy.forward_features(x), pre_logits=True)
    logits = proxy.forward_head(proxy.forward_features(x))
    assert features.shape == (4, 16) and logits.shape == (4, 10)


def test_train_spec_is_trained_once_then_cached(mnist, tmp_path):
    spec = ProxyTrainingSpec(arch="convnet3_w32", count=1, epochs=1, batch_size=1024)
    first = cached_or_trained(spec, mnist, tmp_path, "mnist-5k", progress=False)
    stamp = (tmp_path / spec.cache_key("mnist-5k") / "proxy-0" / "model.safetensors").stat().st_mtime_ns
    second = cached_or_trained(spec, mnist, tmp_path, "mnist-5k", progress=False)
    assert (tmp_path / spec.cache_key("mnist-5k") / "proxy-0" / "model.safetensors").stat().st_mtime_ns == stamp
    x = mnist.test.images(torch.arange(3))
    assert torch.equal(first[0][1][0](x), second[0][1][0](x))
    with pytest.raises(ProxyError, match="unknown keys"):
        ProxyTrainingSpec.from_mapping({"arch": "convnet3", "lr_max": 1})


def test_runs_side_by_side_build_a_cached_artifact_once(tmp_path):
    """Two runs resolving the same training spec at once (runs sharing a cache, test workers): one builds, the
    other waits on the lock and reads the finished folder instead of building (or deleting) it again."""
    builds = []

    def build(staging: Path) -> None:
        builds.append(staging)
        time.sleep(0.5)
        (staging / "weights.bin").write_bytes(b"x")

    def complete(folder: Path) -> bool:
        return (folder / "weights.bin").is_file()

    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: cached_or_built(tmp_path, "expert-key", build, complete), range(2)))
    assert len(builds) == 1 and folders[0] == folders[1] == tmp_path / "expert-key" and complete(folders[0])


def test_artifacts_trained_on_a_held_out_split_are_cached_per_split(tmp_path):
    """Runs whose validation images differ (another seed) must not share trained proxies or experts: one that
    saw the other's validation images would leak them into its model selection. The whole training split keeps
    the plain dataset key (existing caches stay valid)."""
    proxy_spec = ProxyTrainingSpec(arch="convnet3_w32", count=1, epochs=1, batch_size=1024)
    expert_recipe = ExpertRecipe(arch="convnet3_w32", num_experts=1, epochs=1, batch_size=1024)
    proxies, experts = {}, {}
    for seed in (0, 1):
        data = load_image_classification("mnist-5k", validation_per_class=5, seed=seed)
        assert data.train_subset == f"minus-val5-seed{seed}"
        [(spec, _)] = cached_or_trained(proxy_spec, data, tmp_path / "proxies", "mnist-5k", progress=False)
        proxies[seed] = Path(spec.removeprefix("local-dir:"))
        experts[seed] = resolve_experts({"train": asdict(expert_recipe)}, data, tmp_path / "experts", "mnist-5k",
                                        progress=False, compile=False).folder
    assert proxies[0] != proxies[1] and experts[0] != experts[1]
    assert proxies[1].parent.name == proxy_spec.cache_key("mnist-5k-minus-val5-seed1")
    assert "minus-val5-seed1" in (proxies[1] / "README.md").read_text()
    assert json.loads((experts[1] / "experts.json").read_text())["train_subset"] == "minus-val5-seed1"
    assert load_image_classification("mnist-5k").train_subset == ""
    assert load_image_classification("mnist-5k", train_split="test", test_split=None).train_subset == "split-test"


def test_a_proxy_collection_is_one_range_entry_with_recorded_revisions(saved_proxy, mnist, fake_hub):
    model, folder = saved_proxy
    for k in range(2):
        fake_hub.publish(f"org/mnist-convnet3-proxy-{k}", folder, repo_type="model")
    pool = ProxyPool.from_pretrained(["hf-hub:org/mnist-convnet3-proxy-{0..1}", f"local-dir:{folder}"], mnist)
    assert pool.names == ["hf-hub:org/mnist-convnet3-proxy-0", "hf-hub:org/mnist-convnet3-proxy-1",
                          f"local-dir:{folder}"]
    x = mnist.test.images(torch.arange(4))
    assert all(torch.equal(proxy(x), model(x)) for proxy in pool)
    first, second, local = pool.provenance
    assert first["repo_id"] == "org/mnist-convnet3-proxy-0"
    assert first["revision"] == fake_hub.snapshot("org/mnist-convnet3-proxy-0", "model").name
    assert len(first["revision"]) == 40 and first["sha256"] == second["sha256"] == local["sha256"]
    assert expand_specs(["a-{2..3}-b-{0..1}", {"train": {}}]) == ["a-2-b-0", "a-2-b-1", "a-3-b-0", "a-3-b-1",
                                                                 {"train": {}}]
    with pytest.raises(ProxyError, match="is empty"):
        expand_specs(["p-{3..1}"])


def test_push_proxy_uploads_only_the_timm_files(saved_proxy, fake_hub):
    _, folder = saved_proxy
    (folder / "notes.pkl").write_bytes(b"pickle")  # anything else in the folder stays local
    commit = push_proxy(folder, "org/mnist-convnet3-proxy-0")
    assert fake_hub.created[0]["repo_type"] == "model" and fake_hub.created[0]["exist_ok"]
    (upload,) = fake_hub.commits
    assert upload["files"] == ["README.md", "config.json", "model.safetensors"] and commit.oid
    reloaded = timm.create_model("hf-hub:org/mnist-convnet3-proxy-0", pretrained=True)
    assert reloaded.num_classes == 10
    with pytest.raises(ProxyError, match="not a saved proxy"):
        push_proxy(folder.parent, "org/x")


def test_pretrain_script_logs_every_epoch_and_saves_timm_proxies(tmp_path, monkeypatch, caplog, capsys):
    spec = importlib.util.spec_from_file_location("pretrain_proxies", ROOT / "scripts" / "pretrain_proxies.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["pretrain_proxies.py", "--dataset", "mnist-5k", "--arch", "convnet3_w32",
                                      "--count", "1", "--epochs", "2", "--batch_size", "1024",
                                      "--output_dir", str(tmp_path)])
    with caplog.at_level(logging.INFO, logger="cmidd_hf"):
        script.main()
    epochs = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert [m.split(":")[0] for m in epochs] == ["proxy 0 epoch 1/2", "proxy 0 epoch 2/2"]
    losses = [float(m.split("train loss ")[1].split(",")[0]) for m in epochs]
    assert losses[1] < losses[0] < 2.31  # it learns; the first epoch's mean is already below chance (ln 10)
    assert "proxy 0: test accuracy" in capsys.readouterr().out
    assert timm.create_model(f"local-dir:{tmp_path / 'proxy-0'}", pretrained=True).num_classes == 10
