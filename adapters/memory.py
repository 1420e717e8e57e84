"""glibc's allocator told to give large buffers back to the system when they are freed.

By default glibc serves allocations under a threshold that grows up to 32 MiB from its heap, and
a heap fragmented by a burst of large frames (clients may send 64 KiB ones) keeps its pages: a
garbage flood left a server ~18 MiB larger for good. With the threshold fixed at 32 KiB such
buffers are mmapped and unmapped on free; measured, the same flood left +5 MiB
(docs/performance.md, "Fair under abuse"). Small objects (nearly all of a server's) are
unaffected. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # malloc.h
MMAP_THRESHOLD_BYTES = 32 * 1024


def return_large_buffers() -> bool:
    """True if the allocator took the setting."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
