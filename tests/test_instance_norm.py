"""The instance norm with a closed-form double backward: first order bit-identical to PyTorch's GroupNorm, second
order equal to PyTorch's own double backward (the independent reference), eager and compiled."""

import pytest
import torch
import torch.nn.functional as F

from cmidd_hf import build_network
from cmidd_hf.models.instance_norm import instance_norm
from cmidd_hf.models.layers import InstanceNorm2d, fuse_double_backward


def inputs(dtype=torch.float64, shape=(4, 3, 5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(True)
    w = torch.randn(shape[1], generator=g, dtype=dtype).requires_grad_(True)
    b = torch.randn(shape[1], generator=g, dtype=dtype).requires_grad_(True)
    return x, w, b


def second_order(norm, x, w, b, seed=1):
    """Gradients w.r.t. (x, w) of a scalar built from the first-order gradients of a nonlinear loss."""
    g = torch.Generator().manual_seed(seed)
    probe = torch.randn(x.shape, generator=g, dtype=x.dtype)
    y = norm(x, w, b)
    gx, gw, gb = torch.autograd.grad((torch.sin(y) * probe).sum(), (x, w, b), create_graph=True)
    scalar = (gx * torch.cos(x)).sum() + (gw * torch.arange(1.0, w.numel() + 1, dtype=x.dtype)).sum() + 3 * gb.sum()
    return torch.autograd.grad(scalar, (x, w))


@pytest.mark.parametrize("fused", [False, True])
def test_double_backward_equals_pytorchs(fused):
    x, w, b = inputs()
    ours = second_order(lambda x, w, b: instance_norm(x, w, b, 1e-5, fused), x, w, b)
    reference = second_order(lambda x, w, b: F.group_norm(x, x.shape[1], w, b, 1e-5), x, w, b)
    for a, r in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda x, w, b: instance_norm(x, w, b, 1e-5, fused), (x, w, b))


def test_compiled_closed_form_stays_right_across_shapes_dtypes_and_memory_formats():
    """A network's norms see several shapes (and a test suite several dtypes): every one of them must give the
    eager closed form (a dynamic-shape recompile once returned inf here)."""
    for dtype, shape, channels_last in [(torch.float64, (4, 3, 5, 6), False), (torch.float64, (8, 16, 12, 12), False),
                                        (torch.float32, (2, 32, 8, 8), True), (torch.float32, (6, 24, 10, 10), False)]:
        x, w, b = inputs(dtype, shape)
        if channels_last:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        fused = second_order(lambda x, w, b: instance_norm(x, w, b, 1e-5, True), x, w, b)
        eager = second_order(lambda x, w, b: instance_norm(x, w, b, 1e-5, False), x, w, b)
        for f, e in zip(fused, eager, strict=True):
            assert torch.isfinite(f).all()
            torch.testing.assert_close(f, e, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=1e-5)


def test_gradient_with_respect_to_the_upstream_gradient():
    """d/dgy of the first backward (gradcheck of the backward as a function of gy, through x's graph too)."""
    x, w, b = inputs()
    gy = torch.randn(x.shape, dtype=x.dtype, requires_grad=True)

    def first_backward(gy, x, w):
        y = instance_norm(x, w, b)
        return torch.autograd.grad(y, (x, w), grad_outputs=gy, create_graph=True)

    assert torch.autograd.gradcheck(first_backward, (gy, x, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_order_is_bit_identical_to_group_norm(dtype):
    """Forward and first backward are PyTorch's kernels, also with frozen affine parameters (DM's networks)."""
    x = torch.randn(8, 16, 12, 12).to(dtype).requires_grad_(True)
    w, b = torch.randn(16), torch.randn(16)
    probe = torch.randn(8, 16, 12, 12).to(dtype)
    for requires in (False, True):
        w.requires_grad_(requires)
        b.requires_grad_(requires)
        ref, ours = F.group_norm(x, 16, w, b), instance_norm(x, w, b)
        assert torch.equal(ref, ours)
        targets = (x, w, b) if requires else (x,)
        for r, o in zip(torch.autograd.grad((ref * probe).sum(), targets),
                        torch.autograd.grad((ours * probe).sum(), targets), strict=True):
            assert torch.equal(r, o)


def test_the_module_runs_it_eager_and_group_norm_compiled():
    net = build_network("convnet3_w32", 10, 3, (32, 32))
    norms = [m for m in net.modules() if isinstance(m, InstanceNorm2d)]
    assert len(norms) == 3 and not any(m.fused_double_backward for m in norms)
    assert fuse_double_backward(net) is net and all(m.fused_double_backward for m in norms)
    fuse_double_backward(net, False)
    assert not any(m.fused_double_backward for m in norms)
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    assert type(norms[0](x).grad_fn).__name__ == "_InstanceNormBackward"  # autograd's name for our Function's node
    compiled = torch.compile(norms[0])
    torch.testing.assert_close(compiled(x), F.group_norm(x, 32, norms[0].weight, norms[0].bias))
