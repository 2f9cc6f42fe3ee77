"""Keep freed CPU memory in the process while a training loop runs (glibc's malloc only).

By default glibc serves blocks of 128 KiB and more (the threshold adapts, up to 32 MiB) with ``mmap`` and
hands them back with ``munmap``, and trims the heap top, so each training step page-faults its activations in
again: for ConvNet-3 on 100 CIFAR-sized images that is ~19,000 faults and a third of a step on a 2-core CPU
(65 -> 47 ms); with 250 images (67 MB activations, above any threshold) 174 -> 116 ms. Inside
:func:`reuse_freed_memory` every block comes from the heap (``M_MMAP_MAX`` 0) and freed memory stays there for
the next step (``M_TRIM_THRESHOLD`` -1: never trimmed; a 1 GiB threshold, used before, let MTT's 6 GB unrolled
graph be handed back and faulted in again every iteration: 24.9 -> 21.9–23.8 s/it on CPU D, scripts/bench_mtt.py);
on exit glibc's initial settings are back (128 KiB thresholds, 65,536 mmaps; the adaptive threshold stays off)
and the idle heap is returned with ``malloc_trim``.

This is process-wide allocator tuning, the same thing Intel's PyTorch guide does with an ``LD_PRELOAD`` of
jemalloc/tcmalloc; it changes no result, only where memory comes from (and keeps the process's peak a little
higher: 1.9 -> 2.3 GB for a CIFAR-shaped DM run). It does nothing on other C libraries, when the environment
already tunes glibc's malloc (``MALLOC_*_`` variables or ``glibc.malloc`` tunables: the user's settings win and
are never reset to glibc's), or when ``CMIDD_REUSE_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
GLIBC_INITIAL_THRESHOLD = 128 * 1024
GLIBC_INITIAL_MMAP_MAX = 65536
NEVER_TRIM = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"
OPT_OUT_VARIABLE = "CMIDD_REUSE_FREED_MEMORY"
GLIBC_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")

_lock = threading.Lock()
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _left_alone() -> bool:
    """Whether the environment opts out or has tuned glibc's malloc itself."""
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return True
    return any(name in os.environ for name in GLIBC_MALLOC_VARIABLES) or "glibc.malloc." in os.environ.get(
        "GLIBC_TUNABLES", "")


def _set(libc: ctypes.CDLL, option: int, value: int) -> None:
    if libc.mallopt(option, value) != 1:
        raise OSError(f"mallopt({option}, {value}) failed")


@contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, reuse freed CPU memory instead of returning it to the kernel; yields whether it is on.

    Nested blocks are fine (the outermost one restores); a no-op when ``enabled`` is false, off glibc, or
    when the environment opts out or tunes malloc itself (see the module docstring).
    """
    global _depth
    libc = _glibc() if enabled and not _left_alone() else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            _set(libc, M_MMAP_MAX, 0)
            _set(libc, M_TRIM_THRESHOLD, NEVER_TRIM)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(libc, M_MMAP_MAX, GLIBC_INITIAL_MMAP_MAX)
                _set(libc, M_MMAP_THRESHOLD, GLIBC_INITIAL_THRESHOLD)
                _set(libc, M_TRIM_THRESHOLD, GLIBC_INITIAL_THRESHOLD)
                libc.malloc_trim(0)
