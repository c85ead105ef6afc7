"""Host memory: keep what the C allocator frees, for the next step to reuse.

glibc's malloc returns large freed blocks to the operating system, so a step that allocates and frees the same
activations every step can fault all their pages in again (zeroed by the kernel); kept, they are reused. The
cost: the process keeps its peak host memory until it exits, and this is process-wide, so it is on for the
``trainyard`` command and off by default under ``trainyard.fit()`` (see ``engine/api.py``).
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
