"""Class-aware conditional mutual information (CMI) of a labelled image set under a proxy network."""

import datasets
import evaluate
import numpy as np
import torch

_DESCRIPTION = """
The class-aware CMI of CMIDD (ICLR 2025): with P_i the softmax of a proxy network's output for image i and Q_c
the mean of P_i over class c, CMI = mean_i KL(P_i || Q_{y_i}) in nats. Low values mean the images of each class
look alike to the proxy (a "simple" set); it is 0 when every class holds a single image. Use it to measure how
hard a (distilled) dataset is, under the same code the cmidd-hf distillation logs and cards use.
"""

_KWARGS_DESCRIPTION = """
Args:
    images: normalized images, [N, C, H, W] (array-likes or tensors), as the proxy expects them.
    labels: [N] integer class labels.
    proxy: the proxy network(s): an nn.Module with timm's forward_features/forward_head, a spec string
        ("hf-hub:org/name", "local-dir:/path", a timm name, "transformers:org/name", ranges "org/p-{0..3}")
        or a list of them. With several proxies the result is their mean.
    space: "feature" (penultimate features, the paper's default) or "probability" (logits).
    num_classes: number of classes (default: max label + 1).
    batch_size: images per proxy forward.
Returns:
    class_aware_cmi: the CMI in nats (mean over proxies); per_proxy: one value per proxy.
Examples:
    >>> import evaluate, cmidd_hf
    >>> cmi = evaluate.load(cmidd_hf.CLASS_AWARE_CMI)
    >>> cmi.compute(images=x, labels=y, proxy="hf-hub:org/cifar10-resnet18-cifar-proxy-0")
"""

_CITATION = """
@inproceedings{cmidd2025,
  title     = {Going Beyond Feature Similarity: Effective Dataset Distillation based on Class-Aware
               Conditional Mutual Information},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassAwareCMI(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "images": datasets.List(datasets.List(datasets.List(datasets.Value("float32")))),  # C, H, W
                "labels": datasets.Value("int64"),
            }),
            reference_urls=["https://github.com/ndhg1213/CMIDD"],
        )

    def _compute(self, images, labels, proxy=None, space="feature", num_classes=None, batch_size=500):
        from cmidd_hf.artifacts.proxies import ProxyPool
        from cmidd_hf.cmi.class_aware import dataset_cmi

        if proxy is None:
            raise ValueError("class_aware_cmi needs proxy=<nn.Module, spec string or list of them>")
        proxies = proxy if isinstance(proxy, (list, tuple)) else [proxy]
        specs = [p for p in proxies if isinstance(p, str)]
        modules = [p for p in proxies if not isinstance(p, str)]
        if specs:
            modules += list(ProxyPool.from_pretrained(specs))
        values = dataset_cmi(torch.as_tensor(np.asarray(images, dtype=np.float32)),
                             torch.as_tensor(np.asarray(labels, dtype=np.int64)), modules, space=space,
                             num_classes=num_classes, batch_size=batch_size)
        return {"class_aware_cmi": float(np.mean(values)), "per_proxy": values}
