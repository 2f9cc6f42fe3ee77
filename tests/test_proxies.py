"""Proxy pools: timm Hub-format save/load (local-dir:, hf-hub: from the cache), transformers, checks."""

import shutil

import huggingface_hub
import pytest
import torch
import yaml

from cmidd_hf import build_network, load_image_classification
from cmidd_hf.proxies import ProxyError, ProxyPool, ProxyTrainingSpec, cached_or_trained, save_proxy


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
    with pytest.raises(ProxyError, match="could not be loaded"):
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
    spec = ProxyTrainingSpec(arch="convnet3", count=1, epochs=1, batch_size=1024)
    first = cached_or_trained(spec, mnist, tmp_path, "mnist-5k", progress=False)
    stamp = (tmp_path / spec.cache_key("mnist-5k") / "proxy-0" / "model.safetensors").stat().st_mtime_ns
    second = cached_or_trained(spec, mnist, tmp_path, "mnist-5k", progress=False)
    assert (tmp_path / spec.cache_key("mnist-5k") / "proxy-0" / "model.safetensors").stat().st_mtime_ns == stamp
    x = mnist.test.images(torch.arange(3))
    assert torch.equal(first[0][1](x), second[0][1](x))
    with pytest.raises(ProxyError, match="unknown keys"):
        ProxyTrainingSpec.from_mapping({"arch": "convnet3", "lr_max": 1})
