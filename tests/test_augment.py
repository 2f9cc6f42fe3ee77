"""DSA: each op does what it says, siamese sharing is exact, gradients flow."""

import math

import pytest
import torch

from cmidd_hf.data.augment import AugmentParams, DiffAugment, apply, parse_strategy, transfer_at_once

FULL = "color_crop_cutout_flip_scale_rotate"


def one(name, **params):
    return AugmentParams([(name, {k: torch.as_tensor(v) for k, v in params.items()})])


def test_brightness_saturation_contrast():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    shifted = apply(x, one("brightness", shift=[0.25, -0.5]))
    assert torch.allclose(shifted, x + torch.tensor([0.25, -0.5]).view(2, 1, 1, 1))
    sat = apply(x, one("saturation", factor=[0.0, 1.0]))
    assert torch.allclose(sat[0], x[0].mean(0, keepdim=True).expand(3, -1, -1))  # factor 0: grey
    assert torch.allclose(sat[1], x[1], atol=1e-6)  # (x - mean) + mean: rounding near 0
    con = apply(x, one("contrast", factor=[0.5, 1.0]))
    assert torch.allclose(con[0], (x[0] - x[0].mean()) * 0.5 + x[0].mean())
    assert torch.allclose(con[1], x[1], atol=1e-6)


def test_crop_translates_with_zero_fill():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = apply(x, one("crop", dx=[1], dy=[-1]))  # out[i, j] = x[i + 1, j - 1]
    expected = torch.zeros(4, 4)
    expected[:3, 1:] = x[0, 0, 1:, :3]
    assert torch.equal(out[0, 0], expected)


def test_cutout_zeroes_a_truncated_square():
    x = torch.ones(1, 1, 8, 8)
    out = apply(x, AugmentParams([("cutout", {"cx": torch.tensor([0]), "cy": torch.tensor([4]),
                                              "size": torch.tensor([4, 4])})]))
    assert out[0, 0, :2, 2:6].eq(0).all()  # rows -2..1 truncated to 0..1, cols 2..5
    assert out.eq(0).sum() == 8


def test_flip_scale_rotate():
    x = torch.randn(2, 3, 8, 8)
    flipped = apply(x, one("flip", flip=[True, False]))
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])
    identity = apply(x, AugmentParams([("scale", {"sx": torch.ones(2), "sy": torch.ones(2)})]))
    assert torch.allclose(identity, x, atol=1e-5)
    assert torch.allclose(apply(x, one("rotate", theta=[0.0, 0.0])), x, atol=1e-5)
    square = torch.zeros(1, 1, 9, 9)
    square[0, 0, 4, 6] = 1.0  # right of centre
    turned = apply(square, one("rotate", theta=[math.pi / 2]))
    row, col = divmod(int(turned[0, 0].argmax()), 9)
    assert (row, col) in {(2, 4), (6, 4)} and float(turned.max()) == pytest.approx(1.0, abs=1e-5)  # quarter turn


def test_sampling_follows_constants_and_seed():
    aug = DiffAugment(FULL)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = aug.sample(64, (32, 32), g1), aug.sample(64, (32, 32), g2)
    assert a.names == b.names
    for (_, pa), (_, pb) in zip(a.ops, b.ops, strict=True):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    groups = {tuple(aug.sample(4, (32, 32), g1).names) for _ in range(200)}
    assert groups == {("brightness", "saturation", "contrast"), ("crop",), ("cutout",), ("flip",), ("scale",),
                      ("rotate",)}
    for _ in range(50):
        for name, p in aug.sample(256, (32, 32), g1).ops:
            if name == "crop":
                assert p["dx"].abs().max() <= 4
            if name == "scale":
                assert (p["sx"] >= 1 / 1.2).all() and (p["sx"] <= 1.2).all()
            if name == "rotate":
                assert p["theta"].abs().max() <= 15 / 180 * math.pi


def test_idc_mode_always_flips_and_colors_then_one_geometric_op():
    aug = DiffAugment("color_crop_flip_scale_rotate", mode="idc")
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        names = aug.sample(4, (32, 32), g).names
        assert names[:4] == ["flip", "brightness", "saturation", "contrast"]
        assert len(names) == 5 and names[4] in ("crop", "scale", "rotate")


def test_siamese_params_give_identical_outputs_for_identical_inputs():
    aug = DiffAugment(FULL)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 16, 16)
    for _ in range(30):
        params = aug.sample(0, (16, 16), g, per_sample=False)
        real = apply(x.expand(7, -1, -1, -1), params)
        syn = apply(x.expand(3, -1, -1, -1), params)
        assert torch.allclose(real[:3], syn) and torch.allclose(real[0], real[6])


def test_per_sample_params_differ_across_the_batch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 16, 16).expand(8, -1, -1, -1)
    out = DiffAugment("rotate")(x, g)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("group", FULL.split("_"))
def test_gradients_flow_through_every_op(group):
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    out = DiffAugment(group)(x, torch.Generator().manual_seed(0))
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_strategy_parsing():
    assert parse_strategy(None) == [] and parse_strategy("none") == []
    with pytest.raises(ValueError, match="unknown DSA op"):
        parse_strategy("color_blur")


def test_parameters_reach_a_device_in_one_exact_copy_with_their_dtypes():
    g = torch.Generator().manual_seed(3)
    tensors = [torch.rand(5, generator=g), torch.randint(-2 ** 40, 2 ** 40, (3,), generator=g),
               torch.rand(4, generator=g) < 0.5, torch.rand(1, generator=g) * 1e-30]
    for sent, arrived in zip(tensors, transfer_at_once(tensors, torch.device("cpu")), strict=True):
        assert arrived.dtype == sent.dtype and torch.equal(arrived, sent)


def test_params_move_to_another_device_once_and_keep_python_read_sizes_on_the_host():
    params = DiffAugment("cutout_scale", mode="idc").sample(4, (16, 16), torch.Generator().manual_seed(4))
    moved = params.on(torch.device("meta"))
    assert params.on(torch.device("meta")) is moved  # moved once, reused by the siamese batch
    assert params.on(torch.device("cpu")) is params.ops  # already there: nothing copied
    for (name, sent), (moved_name, arrived) in zip(params.ops, moved, strict=True):
        assert name == moved_name and sent.keys() == arrived.keys()
        for key, tensor in arrived.items():
            assert tensor.device.type == ("cpu" if key == "size" else "meta")
            assert tensor.dtype == sent[key].dtype and tensor.shape == sent[key].shape
