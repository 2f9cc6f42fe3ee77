"""The arithmetic floor of a workload on this CPU, shared by the benchmark scripts: its FLOPs (convolutions and
matrix products, counted with ``torch.utils.flop_counter``) over the rate of a large matrix product measured
here at the run's precision. A time divided by its floor is comparable across CPU kinds."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from cmidd_hf.engine.precision import resolve_precision


def matmul_gflops(precision: str, size: int = 2048, repeats: int = 5) -> float:
    """The best rate (GFLOP/s) of a size × size matrix product at ``precision`` on this CPU."""
    dtype = torch.bfloat16 if resolve_precision(precision, "cpu") == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def counted_gflop(work: Callable[[], object]) -> float:
    """GFLOP of the convolutions and matrix products ``work`` runs (run it eagerly: compiled graphs hide them)."""
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops() / 1e9
