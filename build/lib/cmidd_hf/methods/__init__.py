"""Base distillation objectives. Each computes the matching loss of some classes at one step."""

from .base import DistillationObjective
from .dm import DMObjective

__all__ = ["DMObjective", "DistillationObjective"]
