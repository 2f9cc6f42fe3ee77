"""Which floating-point precision a network runs in, and the autocast context for it.

bf16 autocast halves the cost of convolutions only where the hardware computes in bf16: CUDA GPUs with bf16
support, and CPUs with AVX512-BF16 or AMX. Elsewhere PyTorch emulates bf16 through fp32 conversions: on an
AVX2-only CPU (an AMD EPYC Zen 3 here) a ConvNet-3 training step on 100 CIFAR-sized images took 6.5 s in bf16
against 0.47 s in fp32. ``"auto"`` (the default everywhere) therefore picks bf16 only where it is native.
A CPU capped below bf16 by oneDNN's or ATen's ISA variables (``ONEDNN_MAX_CPU_ISA=AVX2``,
``ATEN_CPU_CAPABILITY=avx2``) counts as not native: the kernels then run as on an AVX2-only CPU. Such a cap on
an AVX-512 CPU also needs ``TORCHINDUCTOR_CPP_MARCH`` (e.g. ``x86-64-v3``): torch.compile otherwise builds its
AVX2 kernels with ``-march=native`` and they return NaN (seen with torch 2.14 on an AMD Zen 4); a warning says so.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
_warned: set[str] = set()
#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``) that leave out its bf16 instructions
_ONEDNN_BELOW_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
#: ``ATEN_CPU_CAPABILITY`` values without AVX-512
_ATEN_BELOW_BF16 = {"default", "avx2"}


def _isa_capped_below_bf16() -> bool:
    """Whether the environment caps oneDNN or ATen below the bf16 instructions (emulating an older CPU)."""
    onednn = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return onednn in _ONEDNN_BELOW_BF16 or os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in _ATEN_BELOW_BF16


def _warn_if_compiled_kernels_mix_isas() -> None:
    """Warn once when ATen is capped to AVX2 on an AVX-512 CPU without an Inductor ``-march`` to match."""
    if ("march" not in _warned and os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2"
            and not os.environ.get("TORCHINDUCTOR_CPP_MARCH") and torch.cpu._is_avx512_supported()):
        _warned.add("march")
        logger.warning("ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU: compiled networks are built with -march=native "
                       "and return NaN; also set TORCHINDUCTOR_CPP_MARCH=x86-64-v3")


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 matrix products natively (not through fp32 emulation)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        _warn_if_compiled_kernels_mix_isas()
        if _isa_capped_below_bf16():
            return False
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def check_precision(precision: str) -> None:
    """Raise ValueError unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"bf16"`` or ``"fp32"``: ``"auto"`` becomes bf16 where ``device`` has native bf16, else fp32.

    An explicit ``"bf16"`` on a device without native bf16 is honoured, with a one-time warning.
    """
    check_precision(precision)
    native = has_native_bf16(device)
    if precision == "auto":
        return "bf16" if native else "fp32"
    device_type = torch.device(device).type
    if precision == "bf16" and not native and device_type not in _warned:
        _warned.add(device_type)
        logger.warning("precision='bf16' on a %s device without native bf16 math: it is emulated and much slower "
                       "than fp32 there; use precision='auto' (or 'fp32')", device_type)
    return precision


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """bf16 autocast on ``device`` when the resolved ``precision`` is ``"bf16"``, else a disabled autocast."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
