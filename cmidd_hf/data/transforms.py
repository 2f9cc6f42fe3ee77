"""Transforms of normalized images that a method's artifacts depend on: ZCA whitening (MTT's ``--zca``).

A transform is fitted once on the training split, saved as safetensors beside what was built in its space
(expert trajectories, a distilled set), and applied to every split — so that experts, distillation, evaluation
and a user of a published set all see the same space (MTT users got 10 % until they whitened the test set).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import DataError

ZCA_FILE = "zca.safetensors"


class ZCAWhitening:
    """ZCA whitening of flattened normalized images, as MTT (kornia's ``ZCAWhitening``, eps 0.1, unbiased
    covariance, fitted on the whole training split): ``x -> (x - mean) @ W``, with its inverse for viewing."""

    kind = "zca"

    def __init__(self, matrix: torch.Tensor, mean: torch.Tensor, inverse: torch.Tensor, eps: float) -> None:
        self.matrix, self.mean, self.inverse_matrix = matrix.float(), mean.float().reshape(1, -1), inverse.float()
        self.eps = float(eps)

    @classmethod
    def fit(cls, images: torch.Tensor, eps: float = 0.1) -> ZCAWhitening:
        """Fit on normalized images [N, C, H, W] (kornia's ``zca_mean``, fp32)."""
        from kornia.enhance import zca_mean

        matrix, mean, inverse = zca_mean(images.float(), dim=0, unbiased=True, eps=float(eps), return_inverse=True)
        return cls(matrix, mean, inverse, eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1)
        if flat.shape[1] != self.matrix.shape[0]:
            raise DataError(f"the ZCA transform was fitted on images of {self.matrix.shape[0]} values but these have "
                            f"{flat.shape[1]}; use the transform fitted on this dataset")
        matrix, mean = self.matrix.to(x.device), self.mean.to(x.device)
        return ((flat - mean) @ matrix).reshape(x.shape)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Back to normalized image space (for grids and PNG export)."""
        flat = x.reshape(len(x), -1)
        return (flat @ self.inverse_matrix.to(x.device) + self.mean.to(x.device)).reshape(x.shape)

    @property
    def sha256(self) -> str:
        """Identity of the fitted transform: two artifacts share a space iff their hashes agree."""
        digest = hashlib.sha256()
        for tensor in (self.matrix, self.mean):
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def describe(self) -> dict:
        return {"type": self.kind, "eps": self.eps, "file": ZCA_FILE, "sha256": self.sha256}

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / ZCA_FILE
        save_file({"matrix": self.matrix.contiguous(), "mean": self.mean.contiguous(),
                   "inverse": self.inverse_matrix.contiguous()}, str(path), metadata={"eps": str(self.eps)})
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ZCAWhitening | None:
        """The transform saved in ``folder``, or None when there is none."""
        path = Path(folder) / ZCA_FILE
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            tensors = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                eps = float(f.metadata()["eps"])
        except Exception as err:
            raise DataError(f"{path} is not a readable ZCA transform ({type(err).__name__}: {err}); "
                            "re-create it") from err
        return cls(tensors["matrix"], tensors["mean"], tensors["inverse"], eps)
