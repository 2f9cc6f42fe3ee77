"""Real data: datasets loaded through HF ``datasets`` as class-indexed uint8 stores, the IDX import, the
embedded ``mnist-5k``, writing Hub-layout folders, and the differentiable (DSA) augmentation."""

from .errors import DataError
from .loading import ImageClassificationData, RealImageStore, load_image_classification

__all__ = ["DataError", "ImageClassificationData", "RealImageStore", "load_image_classification"]
