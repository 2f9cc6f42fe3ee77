"""The class-aware CMI: identities, known values, gradients, and the regularizer's contract."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cmidd_hf import CMIRegularizer, class_aware_cmi, class_centroids


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def direct_kl_mean(features, labels):
    """Textbook form, no log-space tricks: mean_i sum_j P_ij log(P_ij / Q_yi,j)."""
    p = features.double().softmax(1)
    total = 0.0
    for i in range(len(labels)):
        q = p[labels == labels[i]].mean(0)
        total += (p[i] * (p[i] / q).log()).sum()
    return total / len(labels)


@pytest.fixture
def sample():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(23, 7, generator=g) * 2
    labels = torch.tensor([0] * 5 + [1] * 9 + [2] * 2 + [4] * 7)  # unequal counts, class 3 absent
    return features, labels


def test_entropy_identity_per_class(sample):
    features, labels = sample
    per_class = class_aware_cmi(features, labels, num_classes=5, reduction="per_class")
    p = features.softmax(1)
    for c in range(5):
        members = p[labels == c]
        if len(members) == 0:
            assert per_class[c] == 0
            continue
        expected = entropy(members.mean(0)) - entropy(members).mean()
        assert torch.allclose(per_class[c], expected, atol=1e-6), c


def test_mean_equals_direct_kl_and_official_kl_div_form(sample):
    features, labels = sample
    value = class_aware_cmi(features, labels)
    assert torch.allclose(value.double(), direct_kl_mean(features, labels), atol=1e-6)
    # The official call: F.kl_div(log Q_y, log_softmax(z), log_target=True, reduction="batchmean").
    log_q = class_centroids(features, labels, 5).log()[labels]
    official = F.kl_div(log_q, F.log_softmax(features, 1), log_target=True, reduction="batchmean")
    assert torch.allclose(value, official, atol=1e-6)


def test_known_value_two_samples():
    # One class, two samples with P = [1, 0] and [0, 1] (large logits): Q = [.5, .5], KL = log 2 each.
    features = torch.tensor([[50.0, -50.0], [-50.0, 50.0]])
    value = class_aware_cmi(features, torch.tensor([0, 0]))
    assert torch.allclose(value, torch.tensor(2.0).log().float(), atol=1e-6)


def test_zero_with_one_sample_per_class():
    features = torch.randn(6, 11)
    assert class_aware_cmi(features, torch.arange(6)).abs() < 1e-6


def test_sum_mean_and_per_class_agree(sample):
    features, labels = sample
    per_class = class_aware_cmi(features, labels, num_classes=5, reduction="per_class")
    counts = torch.bincount(labels, minlength=5).float()
    total = class_aware_cmi(features, labels, reduction="sum")
    assert torch.allclose((per_class * counts).sum(), total, atol=1e-5)
    assert torch.allclose(total / len(labels), class_aware_cmi(features, labels), atol=1e-6)


def test_invariant_to_sample_order(sample):
    features, labels = sample
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(class_aware_cmi(features, labels), class_aware_cmi(features[perm], labels[perm]),
                          atol=1e-7)


def test_given_centroids_are_used(sample):
    features, labels = sample
    own = class_centroids(features, labels, 5)
    assert torch.allclose(class_aware_cmi(features, labels, 5, centroids=own), class_aware_cmi(features, labels),
                          atol=1e-6)
    uniform = torch.full((5, 7), 1 / 7)
    # KL to a uniform centroid is log d - H(P_i): larger than to the class's own mean (Jensen).
    expected = (torch.tensor(7.0).log() - entropy(features.softmax(1))).mean()
    assert torch.allclose(class_aware_cmi(features, labels, 5, centroids=uniform), expected, atol=1e-6)
    assert class_aware_cmi(features, labels, 5, centroids=uniform) > class_aware_cmi(features, labels)


def test_bf16_inputs_are_computed_in_fp32_and_stable():
    features = (torch.randn(40, 512) * 30).bfloat16()  # large logits: naive softmax/log would underflow
    labels = torch.arange(4).repeat_interleave(10)
    value = class_aware_cmi(features, labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.allclose(value.double(), direct_kl_mean(features.float(), labels), rtol=1e-4)


def test_concentrating_a_class_lowers_its_cmi(sample):
    features, labels = sample
    before = class_aware_cmi(features, labels, 5, reduction="per_class")
    moved = features.clone()
    centre = moved[labels == 1].mean(0)
    moved[labels == 1] = centre + 0.3 * (moved[labels == 1] - centre)
    after = class_aware_cmi(moved, labels, 5, reduction="per_class")
    assert after[1] < 0.5 * before[1]
    others = torch.tensor([0, 2, 4])
    assert torch.allclose(after[others], before[others])


class TinyProxy(nn.Module):
    """A timm-style proxy with BatchNorm, to check it stays frozen and in eval mode."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward_features(self, x):
        return self.bn(self.conv(x)).relu()

    def forward_head(self, x, pre_logits=False):
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)


def make_regularizer(**kwargs):
    return CMIRegularizer([TinyProxy(0), TinyProxy(1), TinyProxy(2)], weight=kwargs.pop("weight", 10.0), **kwargs)


def test_gradients_reach_images_not_proxies():
    reg = make_regularizer()
    reg.train()  # callers may flip modes: proxies must stay in eval
    assert all(not p.training for p in reg.proxies)
    stats_before = reg.proxies[0].bn.running_mean.clone()
    images = torch.randn(20, 3, 8, 8, requires_grad=True)
    labels = torch.arange(5).repeat_interleave(4)
    for step in range(6):
        reg(images, labels, step=step)[0].backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in reg.parameters())
    assert torch.equal(reg.proxies[0].bn.running_mean, stats_before)


def test_weighted_term_and_raw_value():
    reg = make_regularizer(weight=7.0)
    images, labels = torch.randn(12, 3, 8, 8), torch.arange(3).repeat_interleave(4)
    term, logs = reg(images, labels, step=4)
    proxy = reg.proxies[reg.proxy_index(4)]
    raw = class_aware_cmi(reg.embed(proxy, images), labels)
    assert torch.allclose(term, 7.0 * raw, atol=1e-6)
    assert logs == {"cmi": pytest.approx(float(raw), abs=1e-6)}


def test_chunked_equals_whole_set_value_and_gradient():
    images = torch.randn(30, 3, 8, 8)
    labels = torch.arange(5).repeat_interleave(6)[torch.randperm(30, generator=torch.Generator().manual_seed(1))]
    grads, values = [], []
    for chunk in (None, 2):
        x = images.clone().requires_grad_(True)
        value = make_regularizer(class_chunk_size=chunk)(x, labels, step=3)[0]
        value.backward()
        values.append(value.detach())
        grads.append(x.grad)
    assert torch.allclose(values[0], values[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_compiled_term_gives_the_eager_value_and_image_gradient_with_one_graph_for_all_proxies():
    """The recipes' default (compile=True): the proxies run channels-last through one compiled graph per image
    shape (their weights are its inputs, so three proxies do not compile three graphs), whole and in chunks."""
    from torch._dynamo.utils import counters

    images = torch.randn(30, 3, 8, 8)
    labels = torch.arange(5).repeat_interleave(6)
    results, graphs = {}, {}
    for compiled in (False, True):
        reg = make_regularizer(compile=compiled)
        counters.clear()
        for chunk in (None, 2):
            reg.class_chunk_size = chunk
            for step in (0, 4, 8):  # each proxy drawn once (proxy_index: 1, 0, 2)
                x = images.clone().requires_grad_(True)
                value = reg(x, labels, step=step)[0]
                value.backward()
                results[compiled, chunk, step] = (value.detach(), x.grad)
            graphs[compiled, chunk] = counters["stats"]["unique_graphs"]
        assert {reg.proxy_index(step) for step in (0, 4, 8)} == {0, 1, 2}
        if compiled:
            assert all(p.is_contiguous(memory_format=torch.channels_last) for p in reg.parameters() if p.dim() == 4)
    # the whole set: one graph for the three proxies; in chunks of 2 of the 5 classes, two more shapes (12 and 6)
    assert graphs == {(False, None): 0, (False, 2): 0, (True, None): 1, (True, 2): 3}
    for (compiled, chunk, step), (value, grad) in results.items():
        if compiled:
            eager_value, eager_grad = results[False, chunk, step]
            # fp32 rounding of other kernels (measured ~2e-6 to 9e-6 relative: a small CMI is a difference of logs)
            assert abs(float(value - eager_value)) <= 5e-5 * abs(float(eager_value))
            assert float((grad - eager_grad).norm()) <= 5e-5 * float(eager_grad.norm())
            assert grad.abs().sum() > 0


def test_per_class_normalization_is_sum_of_class_means():
    images, labels = torch.randn(12, 3, 8, 8), torch.arange(3).repeat_interleave(4)
    reg = make_regularizer(weight=1.0, normalization="per_class")
    proxy = reg.proxies[reg.proxy_index(0)]
    per_class = class_aware_cmi(reg.embed(proxy, images), labels, 3, reduction="per_class")
    assert torch.allclose(reg(images, labels, step=0)[0], per_class.sum(), atol=1e-6)
    # Balanced classes: per-class normalization = C x the global mean.
    glob = make_regularizer(weight=1.0)(images, labels, step=0)[0]
    assert torch.allclose(reg(images, labels, step=0)[0], 3 * glob, atol=1e-5)


def test_global_normalization_decomposes_over_class_shards():
    images, labels = torch.randn(24, 3, 8, 8), torch.arange(6).repeat_interleave(4)
    reg = make_regularizer(weight=1.0)
    whole = reg(images, labels, step=2)[0]
    shards = [labels < 3, labels >= 3]
    parts = sum(reg(images[m], labels[m], step=2, total_samples=24)[0] for m in shards)
    assert torch.allclose(whole, parts, atol=1e-6)


def test_probability_space_uses_logits():
    images, labels = torch.randn(12, 3, 8, 8), torch.arange(3).repeat_interleave(4)
    reg = make_regularizer(weight=1.0, space="probability")
    proxy = reg.proxies[reg.proxy_index(5)]
    logits = proxy.forward_head(proxy.forward_features(images))
    assert torch.allclose(reg(images, labels, step=5)[0], class_aware_cmi(logits, labels), atol=1e-6)


def test_proxy_draw_is_seeded_and_varies():
    a, b = make_regularizer(seed=1), make_regularizer(seed=1)
    draws = [a.proxy_index(s) for s in range(60)]
    assert draws == [b.proxy_index(s) for s in range(60)]
    assert set(draws) == {0, 1, 2}
    assert draws != [make_regularizer(seed=2).proxy_index(s) for s in range(60)]


def test_every_k_steps():
    reg = make_regularizer(every=3)
    images, labels = torch.randn(8, 3, 8, 8), torch.arange(2).repeat_interleave(4)
    outputs = [reg(images, labels, step=s) for s in range(7)]
    assert [float(loss) != 0.0 for loss, _ in outputs] == [True, False, False, True, False, False, True]
    assert [bool(logs) for _, logs in outputs] == [True, False, False, True, False, False, True]


def test_single_sample_per_class_warns_once_and_is_zero():
    reg = make_regularizer()
    images, labels = torch.randn(5, 3, 8, 8), torch.arange(5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = [float(reg(images, labels, step=s)[0]) for s in range(3)]
    assert values == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert sum("single synthetic sample" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(weight=-1.0), "lambda"), (dict(space="logits"), "space"), (dict(normalization="x"), "normalization"),
     (dict(every=0), "every"), (dict(class_chunk_size=0), "class_chunk_size")],
)
def test_bad_configuration_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_regularizer(**kwargs)
