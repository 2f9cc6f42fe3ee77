"""cmidd-hf: dataset distillation with the class-aware CMI regularizer (CMIDD, ICLR 2025), Hugging Face-native.

Importing the package registers its architectures with timm (``convnet3``, ``resnet18_cifar``, ...).
"""

from __future__ import annotations

from .augment import DiffAugment, DSAConstants
from .cmi import CMIRegularizer, class_aware_cmi, class_centroids
from .data import DataError, ImageClassificationData, RealImageStore, load_image_classification
from .evaluation import (
    PROTOCOLS,
    EvalProtocol,
    EvaluationResult,
    evaluate_architectures,
    evaluate_random_subset,
    evaluate_synthetic,
    evaluate_whole_dataset,
    get_protocol,
)
from .models import REGISTERED_ARCHITECTURES, build_network, create_model, embed

__version__ = "0.1.0"

__all__ = [
    "PROTOCOLS", "REGISTERED_ARCHITECTURES", "CMIRegularizer", "DSAConstants", "DataError", "DiffAugment",
    "EvalProtocol", "EvaluationResult", "ImageClassificationData", "RealImageStore", "build_network",
    "class_aware_cmi", "class_centroids", "create_model", "embed", "evaluate_architectures",
    "evaluate_random_subset", "evaluate_synthetic", "evaluate_whole_dataset", "get_protocol",
    "load_image_classification", "__version__",
]
