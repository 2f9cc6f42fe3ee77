"""cmidd-hf: dataset distillation with the class-aware CMI regularizer (CMIDD, ICLR 2025), Hugging Face-native.

Importing the package registers its architectures with timm (``convnet3``, ``resnet18_cifar``, ...).
"""

from __future__ import annotations

from .augment import DiffAugment, DSAConstants
from .cmi import CMIRegularizer, class_aware_cmi, class_centroids, dataset_cmi
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
from .hub import SyntheticSet, load_synthetic
from .interop import load_imagefolder, load_pt
from .metrics import CLASS_AWARE_CMI
from .models import REGISTERED_ARCHITECTURES, build_network, create_model, embed

__version__ = "0.1.0"

__all__ = [
    "CLASS_AWARE_CMI", "PROTOCOLS", "REGISTERED_ARCHITECTURES", "CMIRegularizer", "DSAConstants", "DataError",
    "DiffAugment", "EvalProtocol", "EvaluationResult", "ImageClassificationData", "RealImageStore",
    "SyntheticSet", "build_network", "class_aware_cmi", "class_centroids", "create_model", "dataset_cmi", "embed",
    "evaluate_architectures", "evaluate_random_subset", "evaluate_synthetic", "evaluate_whole_dataset",
    "get_protocol", "load_image_classification", "load_imagefolder", "load_pt", "load_synthetic", "__version__",
]
