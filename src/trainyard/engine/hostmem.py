"""Host memory: keep what the C allocator frees, for the next step to reuse.

glibc's malloc hands large blocks back to the operating system: a block above its mmap threshold is
unmapped when freed, and free memory at the top of the heap beyond its trim threshold is released. A training
step allocates and frees the same activations every step, so each step can fault all of their pages in again
(and the kernel zeroes each one). Measured in ``benchmarks/overhead.py``'s CNN on CPU: 1.8-2.4 million page
faults an epoch (2,500 a step, 10 MB of fresh pages) and a quarter of the run's time in some runs, a few
thousand and a steady speed in others, depending on where long-lived objects happened to sit in the heap.
With freed memory kept: ~0 faults and the same speed every run. jemalloc and tcmalloc setups for CPU
training (Intel's launcher) do the same by never decaying freed memory.

The cost: the process keeps its peak host memory until it exits. Blocks larger than 32 MiB (glibc's
ceiling for the mmap threshold) are still mapped and unmapped each time.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)

_applied: bool | None = None


def keep_freed_host_memory() -> bool:
    """Tell glibc's malloc to keep freed memory (no trimming; blocks up to 32 MiB from the heap, not mmap).
    Process-wide and once; True where it took effect (Linux with glibc), False elsewhere (macOS, Windows, musl)."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
            except (OSError, AttributeError):
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # -1 as the trim threshold is "never trim" (man 3 mallopt); mallopt returns 1 on success, musl's stub 0
            _applied = mallopt(M_TRIM_THRESHOLD, -1) == 1 and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    return _applied
