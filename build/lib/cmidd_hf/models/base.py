"""timm-style base for flatten-then-linear classifiers: ``features`` -> flatten -> (dropout) -> ``head``."""

from __future__ import annotations

import torch
import torch.nn as nn


class FeatureClassifier(nn.Module):
    """Subclasses build ``self.features`` and call :meth:`_build_head` with the flattened feature size."""

    drop_rate: float = 0.0

    def _build_head(self, num_features: int, num_classes: int) -> None:
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.global_pool = ""
        self.head = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self._build_head(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(1)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
