"""The files of a run folder, named once (the engine, the recipe runner and the Hub push all use these)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
GRID = "grid.png"
#: the stored tensors of a multi-formation set (IDC, IDM), next to the grid
CONDENSED = "condensed.safetensors"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
#: written into every checkpoint folder: counters and the run's identity
STATE_FILE = "distill_state.json"
#: run files published next to the synthetic set (never checkpoints or tracker logs)
PUBLISHED = (CURVES, CONFIG, METRICS)


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def curves(self) -> Path:
        return self.root / CURVES

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    def published_files(self) -> dict[str, Path]:
        """The run files that exist and travel with a pushed set: {name in repo: local path}."""
        return {name: self.root / name for name in PUBLISHED if (self.root / name).exists()}
