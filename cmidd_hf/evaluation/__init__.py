"""Evaluation: registered protocols, the network trainer, and the evaluation of a set (or a random real subset,
or the whole training set) by the test accuracy of fresh networks trained on it."""

from .evaluate import (
    EvaluationResult,
    evaluate_architectures,
    evaluate_random_subset,
    evaluate_synthetic,
    evaluate_whole_dataset,
)
from .protocols import PROTOCOLS, EvalProtocol, get_protocol
from .trainer import EpochStats, NetworkTrainer

__all__ = ["EpochStats", "EvalProtocol", "EvaluationResult", "NetworkTrainer", "PROTOCOLS", "evaluate_architectures",
           "evaluate_random_subset", "evaluate_synthetic", "evaluate_whole_dataset", "get_protocol"]
