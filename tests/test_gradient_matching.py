"""DC / DSA: the gradient distance, the double backward, get_loops, BN freezing, exact resume, and learning."""

import json
import math
import os
import signal

import pytest
import torch
from accelerate import Accelerator

from cmidd_hf import evaluate_synthetic, load_image_classification
from cmidd_hf.engine.distill import Distiller
from cmidd_hf.engine.parametrization import PixelParametrization
from cmidd_hf.methods import DC, DSA, DCConfig, DSAConfig, MethodConfigError, MethodContext, match_distance


@pytest.fixture(scope="module")
def mnist():
    return load_image_classification("mnist-5k")


def make(mnist, cls=DSA, ipc=2, seed=0, **config):
    config = {"batch_real": 16, "outer_loop": 2, "inner_loop": 2, **config}
    config_class = DSAConfig if cls is DSA else DCConfig
    context = MethodContext(real=mnist.train, ipc=ipc, seed=seed, precision="fp32",
                            augmentation="color_crop_cutout_scale_rotate" if cls is DSA else None)
    return cls(config_class(**config), context)


# ------------------------------------------------------------------------------------------ the distance


def reference_ours(syn, real):
    """Independent reference on nested Python lists: rows of >=2-D tensors, 1-D tensors ignored."""
    total = 0.0
    for s, r in zip(syn, real, strict=True):
        if s.dim() == 1:
            continue
        for srow, rrow in zip(s.reshape(s.shape[0], -1).tolist(), r.reshape(r.shape[0], -1).tolist(), strict=True):
            dot = sum(a * b for a, b in zip(srow, rrow, strict=True))
            norms = math.sqrt(sum(a * a for a in srow)) * math.sqrt(sum(b * b for b in rrow))
            total += 1 - dot / (norms + 1e-6)
    return total


def hand_built_gradients():
    conv_s = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])            # [out 2, in 1, kh 1, kw 2]
    conv_r = torch.tensor([[[[0.0, 1.0]]], [[[2.0, 2.0]]]])            # row 0 orthogonal, row 1 parallel
    lin_s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    lin_r = torch.tensor([[-3.0, -4.0], [0.0, 5.0]])                   # row 0 opposite, row 1 orthogonal
    bias_s, bias_r = torch.tensor([1.0, -2.0]), torch.tensor([5.0, 7.0])
    return [conv_s, lin_s, bias_s], [conv_r, lin_r, bias_r]


def test_match_distance_ours_by_hand():
    syn, real = hand_built_gradients()
    # rows: orthogonal 1, parallel 1 - 4/(sqrt2*sqrt8 + 1e-6), opposite 2 - ..., orthogonal 1; the bias adds 0
    expected = 1 + (1 - 4 / (4 + 1e-6)) + (1 + 25 / (25 + 1e-6)) + 1
    value = match_distance(syn, real, "ours")
    assert float(value) == pytest.approx(expected, abs=1e-6)
    assert float(value) == pytest.approx(reference_ours(syn, real), abs=1e-6)
    other_bias = [syn[0], syn[1], torch.tensor([100.0, 100.0])]
    assert torch.equal(match_distance(other_bias, real, "ours"), value)  # 1-D tensors contribute 0


def test_match_distance_mse_l1_and_cos_by_hand():
    syn, real = hand_built_gradients()
    flat_s = [v for t in syn for v in t.reshape(-1).tolist()]
    flat_r = [v for t in real for v in t.reshape(-1).tolist()]
    mse = sum((a - b) ** 2 for a, b in zip(flat_s, flat_r, strict=True))
    cos = 1 - sum(a * b for a, b in zip(flat_s, flat_r, strict=True)) / (
        math.sqrt(sum(a * a for a in flat_s)) * math.sqrt(sum(b * b for b in flat_r)) + 1e-6)
    l1 = sum(abs(a - b) for a, b in zip(flat_s, flat_r, strict=True))
    assert float(match_distance(syn, real, "mse")) == pytest.approx(mse, rel=1e-6)
    assert float(match_distance(syn, real, "l1")) == pytest.approx(l1, rel=1e-6)
    assert float(match_distance(syn, real, "cos")) == pytest.approx(cos, abs=1e-6)
    assert float(match_distance(real, real, "cos")) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown metric='l2'"):
        match_distance(syn, real, "l2")


def test_match_distance_on_random_gradients_matches_reference():
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 3, 3, 3), (8,), (5, 8)]
    syn = [torch.randn(s, generator=g) for s in shapes]
    real = [torch.randn(s, generator=g) for s in shapes]
    assert float(match_distance(syn, real)) == pytest.approx(reference_ours(syn, real), abs=1e-4)


# ------------------------------------------------------------------------------------------ the method


def test_official_loops_and_explicit_ones():
    assert DCConfig().loops(1) == (1, 1) and DCConfig().loops(10) == (10, 50) and DCConfig().loops(50) == (50, 10)
    assert DCConfig(outer_loop=3, inner_loop=4).loops(7) == (3, 4)
    assert DCConfig(inner_loop=5).loops(20) == (20, 5)
    with pytest.raises(MethodConfigError, match="ipc=7 has no official get_loops value"):
        DCConfig().loops(7)


def test_image_gradient_flows_through_the_parameter_gradients(mnist):
    method = make(mnist, DC)
    synthetic = PixelParametrization.from_real(mnist.train, 2, seed=0)
    method.begin_iteration(synthetic, 0)
    loss = method.losses(synthetic, [0, 1], 0, 0)["matching_loss"]
    loss.backward()
    grad = synthetic.images.grad
    assert grad[:4].abs().sum() > 0 and grad[4:].abs().sum() == 0  # only classes 0 and 1 were matched
    with torch.no_grad():  # a small step against the gradient lowers the same (step, substep) loss
        synthetic.images -= 1e-3 * grad / grad.norm()
    method.begin_iteration(synthetic, 0)
    assert float(method.losses(synthetic, [0, 1], 0, 0)["matching_loss"].detach()) < float(loss.detach())


def test_batch_norm_statistics_are_set_from_real_images_then_frozen(mnist):
    synthetic = PixelParametrization.from_real(mnist.train, 2, seed=0)
    stats = []
    for classes in ([0], list(range(10))):  # matching one class or ten: the frozen statistics are the same
        torch.manual_seed(0)
        method = make(mnist, DC, net_arch="convnet3_bn", bn_real_per_class=4)
        method.begin_iteration(synthetic, 0)
        method.losses(synthetic, classes, 0, 0)
        bns = method._batch_norms
        assert bns and all(not bn.training for bn in bns)
        assert all(bn.running_mean.abs().sum() > 0 for bn in bns)
        stats.append([bn.running_mean.clone() for bn in bns])
    assert all(torch.equal(a, b) for a, b in zip(*stats, strict=True))


def run_gm(mnist, cls, out, iterations=2, interrupt=None, seed_before=0):
    torch.manual_seed(seed_before)  # the method's initial network comes from the global RNG
    method = make(mnist, cls, outer_loop=3, inner_loop=2, net_arch="convnet3_w32")  # state, not width
    if interrupt is not None:
        losses = method.losses

        def wrapped(synthetic, classes, step, substep):
            if (step, substep) == interrupt:
                os.kill(os.getpid(), signal.SIGTERM)
            return losses(synthetic, classes, step, substep)

        method.losses = wrapped
    synthetic = PixelParametrization.from_real(mnist.train, 2, seed=0)
    return Distiller(Accelerator(cpu=True), method, synthetic, None, iterations, out, {"method": cls.name},
                     checkpoint_every=1, progress=False)


@pytest.mark.parametrize("cls", [DC, DSA])
def test_killed_inside_an_outer_loop_resumes_bit_identically(mnist, tmp_path, cls):
    straight = run_gm(mnist, cls, tmp_path / "a")
    straight.run()
    first = run_gm(mnist, cls, tmp_path / "b", interrupt=(1, 1))
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step_000001", "step_000001_002"]
    resumed = run_gm(mnist, cls, tmp_path / "b", seed_before=123)  # a different initial network: state must load
    resumed.run(resume_from_checkpoint="latest")
    assert torch.equal(straight.synthetic.images, resumed.synthetic.images)
    for name, tensor in straight.method.net.state_dict().items():
        assert torch.equal(tensor, resumed.method.net.state_dict()[name]), name
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]
    assert logged[1]["matching_loss"] == pytest.approx(reference[1]["matching_loss"], rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [DC, DSA])
def test_short_run_beats_its_initial_set(mnist, tmp_path, cls):
    """8 iterations lift the accuracy of fresh networks by ~6 points on mnist-5k (threshold 2). The fresh networks
    are ConvNetW32s (the set is distilled on a ConvNet-3): the same gain, a fifth of the evaluation time."""
    method = make(mnist, cls, ipc=1, batch_real=32, outer_loop=1, inner_loop=1)
    synthetic = PixelParametrization.from_real(mnist.train, 1, seed=0)
    initial = synthetic.images.detach().clone()
    distiller = Distiller(Accelerator(cpu=True), method, synthetic, None, 8, tmp_path, {}, progress=False)
    distiller.run()
    options = dict(protocol="dc", epochs=60, runs=2, compile=False, precision="fp32", progress=False,
                   arch="convnet3_w32")
    before = evaluate_synthetic(initial, synthetic.labels, mnist.test, **options)
    after = evaluate_synthetic(synthetic.images.detach(), synthetic.labels, mnist.test, **options)
    assert after.mean > before.mean + 0.02, (before, after)


@pytest.mark.slow
def test_compiled_network_gives_the_eager_losses_and_inner_loop(mnist):
    """The default path compiles the single-backward passes (real gradients, inner loop); same numbers."""
    synthetic = PixelParametrization.from_real(mnist.train, 2, seed=0)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        method = make(mnist, DSA)
        if compiled:
            method = DSA(method.config, MethodContext(**{**method.context.__dict__, "compile": True}))
        method.begin_iteration(synthetic, 0)
        loss = method.losses(synthetic, [0, 1, 2], 0, 0)["matching_loss"].detach()
        method.after_image_step(synthetic, 0, 0)
        results.append((loss, [p.detach().clone() for p in method.params]))
    assert float(results[1][0]) == pytest.approx(float(results[0][0]), rel=1e-4)
    for eager, compiled in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(eager, compiled, atol=1e-4)
