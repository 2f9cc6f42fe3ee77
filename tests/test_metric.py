"""The class_aware_cmi evaluate module: loads offline from the package and matches the library function."""

import evaluate
import torch

import cmidd_hf
from cmidd_hf import build_network, class_aware_cmi, dataset_cmi


def test_metric_loads_offline_and_matches_class_aware_cmi():
    metric = evaluate.load(cmidd_hf.CLASS_AWARE_CMI)
    torch.manual_seed(0)
    proxies = [build_network("convnet3", 10, 1, (12, 12)).eval() for _ in range(2)]
    images = torch.randn(30, 1, 12, 12)
    labels = torch.arange(10).repeat_interleave(3)
    result = metric.compute(images=images, labels=labels, proxy=proxies, batch_size=7)
    with torch.no_grad():
        direct = [float(class_aware_cmi(p.forward_head(p.forward_features(images), pre_logits=True), labels))
                  for p in proxies]
    assert torch.allclose(torch.tensor(result["per_proxy"]), torch.tensor(direct), rtol=1e-5)
    assert abs(result["class_aware_cmi"] - sum(direct) / 2) < 1e-6 and direct[0] != direct[1]
    probability = metric.compute(images=images, labels=labels, proxy=proxies[0], space="probability")
    assert abs(probability["class_aware_cmi"] - dataset_cmi(images, labels, proxies[:1], "probability")[0]) < 1e-6


def test_dataset_cmi_is_batch_size_invariant_and_zero_for_one_image_per_class():
    torch.manual_seed(1)
    proxy = build_network("convnet3", 10, 1, (12, 12)).eval()
    images = torch.randn(40, 1, 12, 12)
    labels = torch.arange(10).repeat(4)
    whole, = dataset_cmi(images, labels, [proxy], batch_size=40)
    batched, = dataset_cmi(images, labels, [proxy], batch_size=3)
    assert abs(whole - batched) < 1e-5 and whole > 0
    assert dataset_cmi(images[:10], labels[:10], [proxy]) == [0.0]
