"""The compiled 2x2 average pooling: bit-identical to ``F.avg_pool2d`` through the forward, the backward and the
backward's backward, in every dtype and memory format the methods use; the ConvNet's pooling runs it only when
asked and only where it applies."""

import pytest
import torch
import torch.nn.functional as F

from cmidd_hf import build_network
from cmidd_hf.models.avg_pool import avg_pool_2x2
from cmidd_hf.models.layers import AvgPool2d, fuse_double_backward


def three_orders(pool, x, seed=1):
    """The pooled output, the gradient of a nonlinear loss and the gradient of a scalar built from that gradient."""
    g = torch.Generator().manual_seed(seed)
    probe = torch.randn(x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2, generator=g).to(x.dtype)
    y = pool(x)
    gx, = torch.autograd.grad((y * y * probe).sum(), x, create_graph=True)
    ggx, = torch.autograd.grad((gx * torch.cos(x)).sum(), x)
    return y, gx, ggx


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bit_identical_to_avg_pool2d_to_second_order(dtype, channels_last):
    for shape in [(4, 6, 8, 10), (3, 16, 14, 14)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        ours = three_orders(avg_pool_2x2, x)
        reference = three_orders(lambda t: F.avg_pool2d(t, 2), x)
        for o, r in zip(ours, reference, strict=True):
            assert o.dtype == r.dtype and torch.equal(o, r)


def test_gradgradcheck():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(avg_pool_2x2, (x,))


def test_odd_sizes_are_refused_and_the_module_falls_back():
    with pytest.raises(ValueError, match="even H and W"):
        avg_pool_2x2(torch.randn(1, 2, 7, 8))
    pool = AvgPool2d()
    pool.fused_double_backward = True
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    assert torch.equal(pool(x), F.avg_pool2d(x, 2))  # 7 -> 3, PyTorch's kernel
    assert type(pool(x).grad_fn).__name__ == "AvgPool2DBackward0"
    assert type(pool(torch.randn(2, 3, 8, 8, requires_grad=True)).grad_fn).__name__ == "_PoolBackward"


def test_the_convnet_pools_through_it_only_when_fused():
    net = build_network("convnet3_w32", 10, 3, (32, 32))
    pools = [m for m in net.modules() if isinstance(m, AvgPool2d)]
    assert len(pools) == 3 and not any(m.fused_double_backward for m in pools)
    x = torch.randn(2, 3, 32, 32)
    eager = net(x)
    fuse_double_backward(net)
    assert all(m.fused_double_backward for m in pools)
    assert torch.equal(net(x), eager)
    compiled = torch.compile(net)  # under torch.compile the module is plain pooling again, which Inductor lowers
    torch.testing.assert_close(compiled(x), eager, rtol=1e-4, atol=1e-5)
