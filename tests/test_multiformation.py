"""Multi-formation sets and the methods on them: decode, initialization, per-class stepping, IDC, IDM,
resume, saving and loading."""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from cmidd_hf import CMIRegularizer, build_network, evaluate_synthetic, load_image_classification
from cmidd_hf.cmi.class_aware import class_aware_cmi
from cmidd_hf.engine.distill import Distiller
from cmidd_hf.engine.optim import ClassSequentialSGD
from cmidd_hf.engine.parametrization import (
    CondensedSet,
    MultiFormationParametrization,
    decode_mosaic,
    split_sizes,
    tile_mosaic,
)
from cmidd_hf.engine.seeding import generator
from cmidd_hf.hub.interop import export_set, load_pt
from cmidd_hf.hub.synthetic_set import load_condensed, load_synthetic
from cmidd_hf.methods import IDC, IDM, IDCConfig, IDMConfig, MethodContext

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist():
    return load_image_classification("mnist-5k")


def bilinear_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear upsampling with half-pixel centres (align_corners=False), written out by hand."""
    in_h, in_w = image.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            y = max((i + 0.5) * in_h / out_h - 0.5, 0.0)
            x = max((j + 0.5) * in_w / out_w - 0.5, 0.0)
            y0, x0 = min(int(y), in_h - 1), min(int(x), in_w - 1)
            y1, x1 = min(y0 + 1, in_h - 1), min(x0 + 1, in_w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * image[y0, x0] + (1 - dy) * dx * image[y0, x1]
                         + dy * (1 - dx) * image[y1, x0] + dy * dx * image[y1, x1])
    return out


# ------------------------------------------------------------------------------------------ decode and init


def test_a_hand_built_2x2_mosaic_decodes_to_its_four_upsampled_crops():
    crops = [np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([[4.0, 4.0], [8.0, 0.0]]),
             np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[5.0, 6.0], [7.0, 9.0]])]
    mosaic = np.block([[crops[0], crops[1]], [crops[2], crops[3]]])  # top-left, top-right, bottom-left, ...
    decoded = decode_mosaic(torch.tensor(mosaic, dtype=torch.float32).view(1, 1, 4, 4), factor=2)
    assert decoded.shape == (4, 1, 4, 4)
    for k, crop in enumerate(crops):  # row-major crop order, as IDC
        np.testing.assert_allclose(decoded[k, 0].numpy(), bilinear_reference(crop, 4, 4), atol=1e-6)


def test_decode_is_crop_major_over_several_images_and_factor_one_is_identity():
    stored = torch.rand(3, 2, 6, 6)
    decoded = decode_mosaic(stored, 3)
    assert decoded.shape == (27, 2, 6, 6)
    top_middle = F.interpolate(stored[1:2, :, 0:2, 2:4], size=(6, 6), mode="bilinear", align_corners=False)
    assert torch.allclose(decoded[1 * 3 + 1], top_middle[0])  # crop 1 of image 1
    assert decode_mosaic(stored, 1) is stored


def test_init_mix_tiles_unequal_parts_for_odd_sizes():
    assert split_sizes(5, 2) == [3, 2] and split_sizes(28, 3) == [10, 9, 9]
    values = torch.tensor([0.1, 0.4, 0.7, 0.9])
    images = values.view(4, 1, 1, 1).expand(4, 1, 5, 5).clone()
    stored = tile_mosaic(images, 2)
    assert stored.shape == (1, 1, 5, 5)
    assert torch.equal(stored[0, 0, :3, :3], torch.full((3, 3), 0.1))
    assert torch.equal(stored[0, 0, 3:, 3:], torch.full((2, 2), 0.9))
    with pytest.raises(ValueError, match="factor=6"):
        split_sizes(5, 6)


@pytest.mark.parametrize("side", [28, 32])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_decode_pads_with_one_half_and_cuts_equal_crops_as_idc_decode_zoom(side, factor):
    """The official decode_zoom: pad bottom/right with 0.5 to a multiple of the factor, cut factor² equal
    crops of side ceil(side / factor), upsample each bilinearly; checked against a hand-written reference on a
    mosaic whose every pixel is distinct."""
    mosaic = np.arange(side * side, dtype=np.float64).reshape(side, side) / (side * side)
    crop = -(-side // factor)
    padded = np.full((crop * factor, crop * factor), 0.5)
    padded[:side, :side] = mosaic
    decoded = decode_mosaic(torch.tensor(mosaic, dtype=torch.float32).view(1, 1, side, side), factor)
    assert decoded.shape == (factor * factor, 1, side, side)
    for k in range(factor * factor):
        i, j = divmod(k, factor)
        reference = bilinear_reference(padded[i * crop:(i + 1) * crop, j * crop:(j + 1) * crop], side, side)
        np.testing.assert_allclose(decoded[k, 0].numpy(), reference, atol=1e-5)


def test_mix_initialization_tiles_seeded_real_draws(mnist):
    store = mnist.train
    synthetic = MultiFormationParametrization.from_real_mix(store, ipc=2, factor=2, seed=3, unit_pixels=True)
    assert synthetic.stored.shape == (20, 1, 28, 28) and synthetic.decoded_per_class == 8
    assert 0 <= float(synthetic.stored.detach().min()) and float(synthetic.stored.detach().max()) <= 1
    drawn = store.denormalize(store.sample(7, 8, generator(3, "init", 7)))  # class 7: 8 images, 4 groups of 2
    for k, (top, left) in enumerate([(0, 0), (0, 14), (14, 0), (14, 14)]):
        expected = F.interpolate(drawn[2 * k:2 * k + 2], size=(14, 14), mode="nearest")
        assert torch.allclose(synthetic.stored[14:16, :, top:top + 14, left:left + 14], expected)
    images, labels = synthetic.decode([7, 2])
    assert images.shape == (16, 1, 28, 28) and labels.tolist() == [7] * 8 + [2] * 8
    normalized = (decode_mosaic(synthetic.stored[14:16], 2) - store.mean) / store.std
    assert torch.allclose(images[:8], normalized)
    idm = MultiFormationParametrization.from_real_mix(store, 2, 2, seed=3, unit_pixels=False, mode="bilinear")
    assert torch.allclose(idm.stored[14:16], (tile_mosaic(drawn, 2, "bilinear") - store.mean) / store.std, atol=1e-6)
    whole, _ = idm.decode()
    assert torch.allclose(idm.condensed().decode(store.mean.flatten().tolist(), store.std.flatten().tolist())[0],
                          whole.detach(), atol=1e-5)


def test_clamp_keeps_valid_pixels_in_either_storage(mnist):
    for unit in (True, False):
        synthetic = MultiFormationParametrization.from_real_mix(mnist.train, 1, 2, seed=0, unit_pixels=unit)
        with torch.no_grad():
            synthetic.stored.mul_(5)
        synthetic.clamp_pixels()
        pixels = synthetic.condensed().pixels
        assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6


# ------------------------------------------------------------------------------------------ per-class steps


def test_class_sequential_sgd_reproduces_stepping_one_class_after_another():
    """The official loop: one SGD-momentum step per class on one shared tensor. The engine's single step per
    image step with C−1 momentum-only drifts must see every class at the same points."""
    torch.manual_seed(0)
    classes, rows, lr, momentum = 4, 3, 0.1, 0.5
    start, target = torch.randn(classes * rows, 5), torch.randn(classes * rows, 5)

    def class_loss(x, c):
        sl = slice(c * rows, (c + 1) * rows)
        return ((x[sl] - target[sl]) ** 4).sum()

    x = start.clone().requires_grad_(True)
    official = torch.optim.SGD([x], lr=lr, momentum=momentum)
    seen_official = []
    for _ in range(5):
        for c in range(classes):
            seen_official.append(x[c * rows:(c + 1) * rows].detach().clone())
            official.zero_grad()
            class_loss(x, c).backward()
            official.step()

    y = start.clone().requires_grad_(True)
    ours = ClassSequentialSGD([y], lr=lr, momentum=momentum, drift_steps=classes - 1)
    seen_ours = []
    for _ in range(5):
        seen_ours.extend(y[c * rows:(c + 1) * rows].detach().clone() for c in range(classes))
        ours.zero_grad()
        sum(class_loss(y, c) for c in range(classes)).backward()
        ours.step()
    for a, b in zip(seen_official, seen_ours, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    plain = torch.optim.SGD([start.clone().requires_grad_(True)], lr=lr, momentum=momentum)
    assert ClassSequentialSGD([start.clone()], lr, momentum, 0).state_dict() == plain.state_dict()


# ------------------------------------------------------------------------------------------ IDC


def make_idc(mnist, ipc=2, seed=0, compile=False, **config):
    config = IDCConfig(**{"batch_real": 16, "batch_syn_max": 6, "inner_loop": 2, "n_data": 64, "lr_img": 0.01,
                          **config})
    config.validate()
    return IDC(config, MethodContext(real=mnist.train, ipc=ipc, seed=seed, precision="fp32", compile=compile,
                                     augmentation=config.augmentation("mnist-5k")))


def test_idc_cmi_sees_the_matched_subsample_normalized_and_per_class(mnist):
    method = make_idc(mnist, match_augmentation="none")  # so the matched synthetic batch reaches the net as is
    synthetic = method.init_synthetic()
    images, labels = method.regularizer_inputs(synthetic, [1, 4], step=3, substep=1)
    assert images.shape == (12, 1, 28, 28) and labels.tolist() == [1] * 6 + [4] * 6  # 6 of the 8 decoded
    matched = []  # the synthetic rows that losses() feeds to the network, class by class
    logits = method._logits
    method._logits = lambda x, twice_differentiable=False: (
        matched.append(x.detach().clone()) if twice_differentiable else None) or logits(x, twice_differentiable)
    method.losses(synthetic, [1, 4], step=3, substep=1)
    assert len(matched) == 2
    assert torch.equal(torch.cat(matched), images.detach())
    other_step, _ = method.regularizer_inputs(synthetic, [1, 4], step=3, substep=2)
    assert not torch.equal(other_step, images)  # a fresh subsample per image step: the check above can fail
    decoded, _ = synthetic.decode([4])
    assert all(any(torch.equal(row, d) for d in decoded) for row in images[6:])  # normalized decoded rows
    assert method.regularizer_draw(3, 1) == (3, 1)

    proxy = build_network("convnet3", 10, 1, (28, 28))
    regularizer = CMIRegularizer([proxy], weight=2.0, normalization="per_class")
    loss, logs = regularizer(images, labels, 3, 10, total_samples=60, draw=(3, 1))
    features = proxy.forward_head(proxy.forward_features(images), pre_logits=True)
    official = 0.0
    for c in (1, 4):  # IDC: per class, F.kl_div(centroid log, log_softmax, batchmean, log_target) on its rows
        f = features[labels == c]
        log_q = F.softmax(f, 1).mean(0).log()[None].expand(len(f), -1)
        official += float(F.kl_div(log_q, F.log_softmax(f, 1), reduction="batchmean", log_target=True).detach())
    assert logs["cmi"] == pytest.approx(official, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(2.0 * official, rel=1e-5)
    per_class = class_aware_cmi(features, labels, 10, reduction="per_class").detach()
    assert logs["cmi"] == pytest.approx(float(per_class.sum()), rel=1e-6)


def test_idc_matches_conv_weight_gradients_and_a_step_lowers_the_loss(mnist):
    method = make_idc(mnist, dis_metric="mse")
    synthetic = method.init_synthetic()
    assert all(p.dim() == 4 for p in method.matched) and len(method.matched) == 3
    method.begin_iteration(synthetic, 0)
    loss = method.losses(synthetic, [0, 5], 0, 0)["matching_loss"]
    (grad,) = torch.autograd.grad(loss, [synthetic.stored])
    assert grad.abs().sum() > 0 and grad[2:10].abs().sum() == 0  # only classes 0 and 5 move
    with torch.no_grad():
        synthetic.stored -= 1e-2 * grad / grad.norm()
    assert float(method.losses(synthetic, [0, 5], 0, 0)["matching_loss"].detach()) < float(loss.detach())


def test_idc_iteration_clamps_and_redraws_the_network(mnist):
    method = make_idc(mnist)
    synthetic = method.init_synthetic()
    with torch.no_grad():
        synthetic.stored[0] += 3
    method.begin_iteration(synthetic, 4)
    assert float(synthetic.stored.detach().max()) <= 1.0
    first = [p.detach().clone() for p in method.net.parameters()]
    method.after_image_step(synthetic, 4, 0)  # one network epoch on real data
    assert any(not torch.equal(a, b) for a, b in zip(first, method.net.parameters(), strict=True))
    method.begin_iteration(synthetic, 4)
    assert all(torch.equal(a, b) for a, b in zip(first, method.net.parameters(), strict=True))


def test_idc_lr_rule_and_refusals():
    # IDC's argument.py::tune_lr_img with misc/reproduce.py's bases, by hand
    assert IDCConfig().resolved_lr_img(10, 32, "uoft-cs/cifar10") == pytest.approx(5e-3)
    assert IDCConfig().resolved_lr_img(50, 32, "svhn") == pytest.approx(0.025)
    assert IDCConfig().resolved_lr_img(10, 28, "fashion-mnist") == pytest.approx(7.65625e-5)  # 1e-4 · (28/32)²
    assert IDCConfig().resolved_lr_img(10, 28, "mnist-5k") == pytest.approx(1e-4)  # size base 28 for MNIST
    assert IDCConfig().resolved_lr_img(50, 28, "mnist-5k") == pytest.approx(5e-4)
    assert IDCConfig(lr_img_base=2e-4).resolved_lr_img(20, 28, "mnist") == pytest.approx(4e-4)
    assert IDCConfig(lr_img=0.3).resolved_lr_img(10, 32, "cifar10") == 0.3
    for bad, message in [(dict(lr_img=0.3, lr_img_base=1e-4), "set only one"), (dict(factor=0), "factor=0"),
                         (dict(init="mix", factor=1), "init=mix needs factor"),
                         (dict(lr_img=-1.0), "lr_img=-1.0"), (dict(mix_p=2.0), "mix_p=2.0"),
                         (dict(match_augmentation="color_blur"), "match_augmentation")]:
        with pytest.raises(ValueError, match=message):
            IDCConfig(**bad).validate()


def run_method(mnist, make, out, iterations, interrupt=None, seed_before=0):
    torch.manual_seed(seed_before)
    method = make()
    if interrupt is not None:
        losses = method.losses

        def wrapped(synthetic, classes, step, substep):
            if (step, substep) == interrupt:
                os.kill(os.getpid(), signal.SIGTERM)
            return losses(synthetic, classes, step, substep)

        method.losses = wrapped
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        proxies = [build_network("convnet3", 10, 1, (28, 28)) for _ in range(2)]
    regularizer = CMIRegularizer(proxies, weight=5.0,
                                 normalization="per_class" if method.name == "idc" else "global", seed=1)
    return Distiller(Accelerator(cpu=True), method, method.init_synthetic(), regularizer, iterations, out,
                     {"method": method.name}, checkpoint_every=1, progress=False)


@pytest.mark.parametrize("name, interrupt, saved", [("idc", (1, 0), "step_000001_001"),
                                                    ("idm", (2, 0), "step_000003")])
def test_killed_run_resumes_bit_identically(mnist, tmp_path, name, interrupt, saved):
    def make():  # ConvNetW32s: resuming is about state, which the width does not change
        if name == "idc":
            return make_idc(mnist, net_arch="convnet3_w32")
        return make_idm(mnist, net_arch="convnet3_w32")

    iterations = 3 if name == "idc" else 4
    straight = run_method(mnist, make, tmp_path / "a", iterations=iterations)
    straight.run()
    first = run_method(mnist, make, tmp_path / "b", iterations=iterations, interrupt=interrupt)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert (tmp_path / "b" / "checkpoints" / saved).is_dir()
    resumed = run_method(mnist, make, tmp_path / "b", iterations=iterations, seed_before=123)
    resumed.run(resume_from_checkpoint="latest")
    assert torch.equal(straight.synthetic.stored, resumed.synthetic.stored)
    if name == "idm":
        assert [m.uid for m in straight.method.pool] == [m.uid for m in resumed.method.pool]
        for a, b in zip(straight.method.pool, resumed.method.pool, strict=True):
            assert (a.correct, a.seen) == (b.correct, b.seen)
            assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, iterations + 1))
    assert logged[-1]["loss"] == pytest.approx(reference[-1]["loss"], rel=1e-12)


# ------------------------------------------------------------------------------------------ IDM


def make_idm(mnist, ipc=2, seed=0, compile=False, **config):
    config = IDMConfig(**{"batch_real": 16, "batch_train": 32, "model_train_steps": 2, "net_num": 4,
                          "initial_nets": 2, "net_generate_interval": 2, "accuracy_reset_interval": 3, **config})
    config.validate()
    return IDM(config, MethodContext(real=mnist.train, ipc=ipc, seed=seed, precision="fp32", compile=compile,
                                     augmentation=config.augmentation("mnist-5k")))


@pytest.mark.parametrize("name", ["idc", "idm"])
def test_compiled_path_gives_the_eager_losses_gradients_and_network_updates(mnist, name):
    """The recipes' default (compile=True: inductor, channels-last) against eager, through one whole iteration:
    the losses, the image gradient, and the networks the method trains between image steps."""
    make = make_idc if name == "idc" else make_idm
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        method = make(mnist, compile=compiled)
        synthetic = method.init_synthetic()
        method.begin_iteration(synthetic, 0)
        losses = method.losses(synthetic, [0, 3], 0, 0)
        total = sum(losses.values())
        (grad,) = torch.autograd.grad(total, [synthetic.stored])
        method.after_image_step(synthetic, 0, 0)
        nets = torch.cat([p.detach().flatten() for p in method.net.parameters()] if name == "idc"
                         else [t.float().flatten() for m in method.pool for t in m.weights.values()])
        results[compiled] = ({k: float(v.detach()) for k, v in losses.items()}, grad, nets)
    eager, compiled = results[False], results[True]
    assert compiled[0] == pytest.approx(eager[0], rel=1e-4)
    assert relatively_close(compiled[1], eager[1])
    assert relatively_close(compiled[2], eager[2])  # the networks trained between image steps


def relatively_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of channels-last / fused kernels (relative 5e-3; the IDC image gradient, a
    gradient of a gradient difference, differs by ~1.4e-3 on mnist-5k)."""
    return a.norm() > 0 and bool((a - b).norm() <= 5e-3 * b.norm())


def test_idm_pool_grows_rotates_and_trains_on_schedule(mnist):
    method = make_idm(mnist)
    synthetic = method.init_synthetic()
    assert [m.uid for m in method.pool] == [0, 1]
    sizes = []
    for step in range(7):
        method.begin_iteration(synthetic, step)
        sizes.append([m.uid for m in method.pool])
        method.after_image_step(synthetic, step, 0)
        if step == 2:
            assert sum(m.seen for m in method.pool) == 3 * 2 * 2 * 32  # 3 iterations x 2 nets x 2 steps x 32
    # a new network at steps 0, 2, 4, 6; the oldest leaves once 4 are in the pool
    assert sizes[0] == [0, 1, 2] and sizes[2] == [0, 1, 2, 3] and sizes[4] == [1, 2, 3, 4]
    assert sizes[6] == [2, 3, 4, 5]
    assert sum(m.seen for m in method.pool) == 2 * 2 * 32  # counts reset at step 6 (every 3 iterations)
    fresh = make_idm(mnist)  # identical draws from the same seed
    for step in range(7):
        fresh.begin_iteration(synthetic, step)
        fresh.after_image_step(synthetic, step, 0)
    for a, b in zip(method.pool, fresh.pool, strict=True):
        assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_idm_ce_term_is_weighted_by_the_networks_training_accuracy(mnist):
    method = make_idm(mnist, ce_weight=0.5)
    synthetic = method.init_synthetic()
    method.begin_iteration(synthetic, 1)
    member = method._member(method.picked[0])
    assert method.losses(synthetic, [0, 1], 1, 0)["ce_loss"] == 0  # untrained: accuracy 0 %, weight 0
    member.correct, member.seen = 30, 40  # 75 %
    losses = method.losses(synthetic, [0, 1], 1, 0)
    images, labels = synthetic.decode([0, 1])
    assert losses["ce_loss"] > 0
    # the matching loss: squared distance of mean embeddings, summed over classes (DM's loss)
    assert losses["matching_loss"] > 0
    method.augment = type(method.augment)(None)
    no_aug = method.losses(synthetic, [0, 1], 1, 0)
    logits = method.net(images)
    expected = 0.5 * 75.0 * sum(float(F.cross_entropy(logits[labels == c], labels[labels == c]).detach())
                                for c in (0, 1))
    assert float(no_aug["ce_loss"].detach()) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------ learning


@pytest.mark.slow
@pytest.mark.parametrize("name", ["idc", "idm"])
def test_short_run_beats_its_initial_set(mnist, tmp_path, name):
    if name == "idc":
        method = make_idc(mnist, ipc=1, batch_real=32, batch_syn_max=128, inner_loop=10, n_data=64,
                          lr_img=0.01, dis_metric="mse", mix_p=0.0, match_augmentation="color_crop",
                          net_arch="convnet3_w32")
        iterations, epochs = 3, 60  # +4.0 points on mnist-5k (CPU C; on a ConvNet-3 2 iterations: +4.2, 3.5x the time)
    else:
        method = make_idm(mnist, ipc=1, batch_real=32, lr_img=0.5)
        iterations, epochs = 10, 50  # +6.4 points
    # evaluated on fresh ConvNetW32s: the same gains as ConvNet-3s (CPU D), 1/5 the time
    synthetic = method.init_synthetic()
    initial = synthetic.decode()[0].detach().clone()
    Distiller(Accelerator(cpu=True), method, synthetic, None, iterations, tmp_path, {}, progress=False).run()
    images, labels = synthetic.decode()
    options = dict(protocol="dc", epochs=epochs, runs=2, compile=False, precision="fp32", progress=False,
                   arch="convnet3_w32")
    before = evaluate_synthetic(initial, labels, mnist.test, **options)
    after = evaluate_synthetic(images.detach(), labels, mnist.test, **options)
    assert after.mean > before.mean + 0.02, (before, after)


# ------------------------------------------------------------------------------------------ saving


@pytest.fixture(scope="module")
def idc_run(proxy_cache, tmp_path_factory):
    from cmidd_hf.cli.runner import main_entry

    tmp_path = tmp_path_factory.mktemp("idc")
    argv = ["--config", str(ROOT / "tests" / "fixtures" / "tiny_idc_cmi.yaml"), "--output_dir",
            str(tmp_path / "out"), "--proxy_cache_dir", str(proxy_cache), "--run_name", "run"]
    assert main_entry(argv, None, method="idc") == 0
    return tmp_path / "out" / "run"


def test_saved_set_holds_decoded_images_condensed_tensors_and_factor(idc_run, mnist):
    synthetic = load_synthetic(idc_run)
    assert synthetic.images.shape == (80, 1, 28, 28) and synthetic.ipc == 8
    condensed = load_condensed(idc_run)
    assert condensed.factor == 2 and condensed.pixels.shape == (20, 1, 28, 28)
    assert condensed.labels.tolist() == [c for c in range(10) for _ in range(2)]
    decoded, labels = condensed.decode(synthetic.mean, synthetic.std)
    assert torch.allclose(decoded, synthetic.images, atol=1e-5) and torch.equal(labels, synthetic.labels)
    block = synthetic.distillation
    assert block["parametrization"]["factor"] == 2 and block["regularizer"]["normalization"] == "per_class"
    assert block["method_config"]["inner_loop"] == 3


def test_export_in_idc_layout_and_imagefolder_round_trip(idc_run, tmp_path, capsys):
    synthetic = load_synthetic(idc_run)
    path = export_set(synthetic, "pt", tmp_path / "data.pt")
    pixels, labels = torch.load(path, weights_only=True)  # IDC's data.pt: [stored pixels in [0, 1], labels]
    assert torch.equal(pixels, synthetic.condensed.pixels) and torch.equal(labels, synthetic.condensed.labels)
    again = load_pt(path, normalized=False, factor=2, mean=synthetic.mean, std=synthetic.std,
                    class_names=synthetic.class_names)
    assert torch.allclose(again.images, synthetic.images, atol=1e-5) and again.condensed.factor == 2
    folder = export_set(synthetic, "imagefolder", tmp_path / "folder")
    assert sum(1 for _ in folder.glob("*/*.png")) == 80

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import evaluate_synthetic as script
    finally:
        sys.path.pop(0)
    assert script.main([str(path), "--dataset", "mnist-5k", "--pixels", "--factor", "2", "--epochs", "1",
                        "--runs", "1", "--no_compile", "--save", str(tmp_path / "imported")]) == 0
    imported = load_synthetic(tmp_path / "imported")
    assert imported.images.shape == (80, 1, 28, 28) and imported.condensed.factor == 2
    assert script.main([str(path), "--dataset", "mnist-5k", "--pixels", "--factor", "0"]) == 2
    assert "factor=0" in capsys.readouterr().err


def test_condensed_set_decode_matches_the_parametrization(mnist):
    synthetic = MultiFormationParametrization.from_real_mix(mnist.train, 1, 2, seed=5, unit_pixels=True)
    condensed = synthetic.condensed()
    assert isinstance(condensed, CondensedSet)
    images, labels = synthetic.decode()
    again, again_labels = condensed.decode(mnist.mean, mnist.std)
    assert torch.allclose(again, images.detach(), atol=1e-6) and torch.equal(again_labels, labels)
