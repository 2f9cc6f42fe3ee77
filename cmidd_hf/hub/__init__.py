"""Finished sets: the decoded :class:`SyntheticSet` saved as a Hub-layout dataset with its card, loaded back from
a folder or the Hub, exchanged with other codebases' formats, and drawn as grids and curves."""

from .interop import export_set, load_imagefolder, load_pt
from .synthetic_set import SyntheticSet, load_condensed, load_synthetic

__all__ = ["SyntheticSet", "export_set", "load_condensed", "load_imagefolder", "load_pt", "load_synthetic"]
