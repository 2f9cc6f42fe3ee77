"""Registered architectures: parameter counts from the spec, the timm feature API, and the Hub-format round trip."""

import pytest
import timm
import torch
from timm.models import save_for_hf

import cmidd_hf  # noqa: F401  (registers the architectures)
from cmidd_hf import build_network, embed


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, kwargs, expected, feature_dim",
    [
        ("convnet3", dict(num_classes=10), 320_010, 2048),
        ("convnet3", dict(num_classes=10, in_chans=1, img_size=28), 317_706, 2048),
        ("convnet3", dict(num_classes=100), 504_420, 2048),
        ("convnet4", dict(num_classes=200, img_size=64), 857_160, 2048),
        # the DC zoo's width ablation: 3·32·9+32 + 2·(32·32·9+32) + 3·64 (instance-norm affine) + 512·10+10
        ("convnet3_w32", dict(num_classes=10), 24_714, 512),
        ("convnet3_w256", dict(num_classes=10), 1_229_834, 4096),
        ("resnet18_cifar", dict(num_classes=10), 11_173_962, 512),
        ("resnet18_cifar_bn", dict(num_classes=10), 11_173_962, 512),
        ("alexnet_cifar", dict(num_classes=10), 1_872_202, 3072),
        ("vgg11_cifar", dict(num_classes=10), 9_231_114, 512),
        ("vgg11_cifar_bn", dict(num_classes=10), 9_231_114, 512),
    ],
)
def test_parameter_counts_and_embedding(name, kwargs, expected, feature_dim):
    model = timm.create_model(name, **kwargs)
    assert n_params(model) == expected
    size = kwargs.get("img_size", 32)
    x = torch.randn(2, kwargs.get("in_chans", 3), size, size)
    assert embed(model, x).shape == (2, feature_dim)
    assert model(x).shape == (2, kwargs["num_classes"])
    assert model.num_features == feature_dim


def test_convnet_variants():
    assert isinstance(timm.create_model("convnet3_bn").features[1], torch.nn.BatchNorm2d)
    instance = timm.create_model("convnet3").features[1]
    assert isinstance(instance, torch.nn.GroupNorm) and instance.num_groups == instance.num_channels == 128
    for norm in ("layer", "group", "none"):
        model = timm.create_model("convnet3", norm=norm, act="leakyrelu", pool="max", width=32)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="norm"):
        timm.create_model("convnet3", norm="weird")


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("convnet9000", 10, 3, 32)


@pytest.mark.parametrize("name", ["convnet3", "resnet18_cifar"])
def test_hub_format_round_trip(tmp_path, name):
    model = timm.create_model(name, num_classes=7, in_chans=1, img_size=28).eval()
    save_for_hf(model, tmp_path, safe_serialization=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert loaded.num_classes == 7
