"""The class-aware conditional mutual information of a set under proxy networks, and the regularizer that adds
λ·CMI to any base method (its ``evaluate`` metric is :mod:`cmidd_hf.metrics`)."""

from .class_aware import CMIRegularizer, class_aware_cmi, class_centroids, dataset_cmi

__all__ = ["CMIRegularizer", "class_aware_cmi", "class_centroids", "dataset_cmi"]
