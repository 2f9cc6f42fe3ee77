"""cmidd-hf: dataset distillation with the class-aware CMI regularizer (CMIDD, ICLR 2025), Hugging Face-native.

Importing the package registers its architectures with timm (``convnet3``, ``resnet18_cifar``, ...).
"""

from __future__ import annotations

from .cmi.class_aware import CMIRegularizer, class_aware_cmi, class_centroids, dataset_cmi
from .data.augment import DiffAugment, DSAConstants
from .data.errors import DataError
from .data.loading import ImageClassificationData, RealImageStore, load_image_classification
from .engine.parametrization import CondensedSet, MultiFormationParametrization, Parametrization, PixelParametrization
from .evaluation.evaluate import (
    EvaluationResult,
    evaluate_architectures,
    evaluate_random_subset,
    evaluate_synthetic,
    evaluate_whole_dataset,
)
from .evaluation.protocols import PROTOCOLS, EvalProtocol, get_protocol
from .hub.interop import export_set, load_imagefolder, load_pt
from .hub.synthetic_set import SyntheticSet, load_condensed, load_synthetic
from .methods import METHODS, DistillationMethod, get_method, match_distance
from .metrics import CLASS_AWARE_CMI
from .models import REGISTERED_ARCHITECTURES, build_network, create_model, embed

__version__ = "0.1.0"

__all__ = [
    "build_network", "CLASS_AWARE_CMI", "class_aware_cmi", "class_centroids", "CMIRegularizer", "CondensedSet",
    "create_model", "DataError", "dataset_cmi", "DiffAugment", "DistillationMethod", "DSAConstants", "embed",
    "EvalProtocol", "evaluate_architectures", "evaluate_random_subset", "evaluate_synthetic",
    "evaluate_whole_dataset", "EvaluationResult", "export_set", "get_method", "get_protocol",
    "ImageClassificationData", "load_condensed", "load_image_classification", "load_imagefolder", "load_pt",
    "load_synthetic", "match_distance", "METHODS", "MultiFormationParametrization", "Parametrization",
    "PixelParametrization", "PROTOCOLS", "RealImageStore", "REGISTERED_ARCHITECTURES", "SyntheticSet",
    "__version__",
]
