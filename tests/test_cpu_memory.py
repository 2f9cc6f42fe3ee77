import json
import platform
import subprocess
import sys
import textwrap

import pytest

from cmidd_hf.engine import cpu_memory
from cmidd_hf.engine.cpu_memory import reuse_freed_memory

# Run in a fresh interpreter: the test process's heap already holds large free chunks that could serve the
# "after" allocation and hide whether the thresholds were restored.
_PROBE = textwrap.dedent("""
    import ctypes, json
    import torch
    from cmidd_hf.engine import cpu_memory
    from cmidd_hf.engine.cpu_memory import reuse_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def mmapped_while_holding(nbytes):
        before = libc.mallinfo2().hblkhd
        block = torch.empty(nbytes, dtype=torch.uint8)
        grown = libc.mallinfo2().hblkhd - before
        del block
        return grown

    mib = 1024 * 1024
    out = {"before": mmapped_while_holding(4 * mib)}
    with reuse_freed_memory() as active:
        out["active"] = active
        out["inside"] = mmapped_while_holding(4 * mib)
        with reuse_freed_memory():
            pass
        out["depth_after_inner"] = cpu_memory._depth
        out["inside_after_inner"] = mmapped_while_holding(48 * mib)  # above any mmap threshold
        big = torch.empty(1536 * mib, dtype=torch.uint8)  # a graph larger than any trim threshold
        del big
        out["heap_kept"] = libc.mallinfo2().arena
    out["depth_after"] = cpu_memory._depth
    # larger than any chunk freed inside: a free chunk that malloc_trim could not give back (something was
    # allocated above it) would serve a smaller block from the heap whatever the thresholds are
    out["after"] = mmapped_while_holding(2048 * mib)
    print(json.dumps(out))
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc tuning")
def test_large_blocks_come_from_the_heap_inside_and_from_mmap_after():
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    mib = 1024 * 1024
    assert out["before"] >= 4 * mib  # glibc's default: a 4 MiB block is mmapped
    assert out["active"] and out["inside"] == 0
    assert out["depth_after_inner"] == 1 and out["inside_after_inner"] == 0  # the inner exit did not restore
    assert out["heap_kept"] >= 1536 * mib  # freed memory is never trimmed inside, however large
    assert out["depth_after"] == 0 and out["after"] >= 2048 * mib  # back to mmapping large blocks


def test_disabled_is_a_no_op():
    with reuse_freed_memory(enabled=False) as active:
        assert not active
        assert cpu_memory._depth == 0


def test_environment_opt_out(monkeypatch):
    monkeypatch.setenv("CMIDD_REUSE_FREED_MEMORY", "0")
    with reuse_freed_memory() as active:
        assert not active
        assert cpu_memory._depth == 0


@pytest.mark.parametrize("name, value", [("MALLOC_MMAP_THRESHOLD_", "65536"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")])
def test_users_own_malloc_tuning_is_left_alone(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with reuse_freed_memory() as active:
        assert not active
        assert cpu_memory._depth == 0
