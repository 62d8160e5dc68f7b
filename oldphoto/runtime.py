"""Process-level tuning for workers that push many large numpy arrays through short operations."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache
def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc's malloc reuse freed image-sized blocks instead of returning them to the OS.

    By default each array above the mmap threshold (and Dask workers lower the trim threshold to 64 KiB)
    is a fresh mapping, so every temporary of a 512x512 float image pays for its page faults again:
    measured here, that made a 1 ms numpy operation take 10 ms. Blocks up to `mmap_threshold` come from
    the heap instead, and up to `trim_threshold` of free heap is kept for reuse. Returns False where the
    C library is not glibc (nothing changed).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return bool(ok and mallopt(_M_TOP_PAD, 64 << 20))


def usable_cores() -> int:
    """The cores this process may run on (taskset, a container's cpuset), not all the machine's:
    threads beyond them only contend. Where the OS cannot say (macOS), all the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
