"""Base distillation methods, one module each, registered by name (``get_method("dm")``)."""

from ..engine.method import (
    METHODS,
    DistillationMethod,
    MethodConfig,
    MethodConfigError,
    MethodContext,
    Sharding,
    get_method,
    register_method,
)
from .dm import DistributionMatching, DMConfig
from .gradient_matching import DC, DSA, DCConfig, DSAConfig, match_distance
from .idc import IDC, IDCConfig
from .idm import IDM, IDMConfig
from .mtt import MTT, MTTConfig
from .sre2l import SRe2L, SRe2LConfig

__all__ = [
    "DC", "DCConfig", "DMConfig", "DSA", "DSAConfig", "IDC", "IDCConfig", "IDM", "IDMConfig", "MTT", "MTTConfig",
    "SRe2L", "SRe2LConfig",
    "DistillationMethod", "DistributionMatching", "METHODS",
    "MethodConfig", "MethodConfigError", "MethodContext", "Sharding", "get_method", "match_distance",
    "register_method",
]
