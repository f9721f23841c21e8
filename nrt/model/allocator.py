"""glibc malloc settings for CPU inference: keep freed memory in the process instead of unmapping it.

A batched network call on the CPU allocates activations of tens of MiB (the demo: 180 tiles x 32 channels x
40 x 56 cells = 52 MiB). glibc serves every block above its mmap threshold, at most 32 MiB, with a fresh mmap
and returns it to the kernel on free, so each call page-faults its activations in again: measured, a quarter to
a third of the sampler's CPU time was system time, with ~1.8 M minor faults per 30-member sample. With mmap
off and a high trim threshold, freed blocks stay on the heap and are reused by the next call (mallopt(3)).
The cost is that the process keeps its high-water heap, which is what a long-lived worker wants anyway.

The worker runs each job in a thread, and glibc gives each thread its own arena, whose heaps are at most
64 MiB: a larger block (a demo batch's widest activation) is mapped afresh and unmapped on free whatever the
settings above say. Measured on the demo sampler in a thread: 430-535 k minor faults and 1.5-1.9 s of system
time per 30-member sample, against none in the main thread. One arena for the whole process (M_ARENA_MAX = 1)
sends every thread's blocks to the main heap, where the settings above hold: 9-28 faults a warm sample. The price
is one lock on malloc for all threads, which the few large allocations of this workload barely touch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger("nrt.model.allocator")

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # <malloc.h>
TRIM_THRESHOLD_BYTES = 1 << 30  # return the heap's free top to the kernel only beyond 1 GiB

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the settings once per process; False where the C library is not glibc (nothing to do there)."""
    global _applied
    if _applied is None:
        _applied = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _applied = (bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
                        and bool(libc.mallopt(M_ARENA_MAX, 1)))
            log.debug("glibc malloc: mmap off, trim threshold %d MiB, one arena (%s)", TRIM_THRESHOLD_BYTES >> 20,
                      "applied" if _applied else "refused")
    return _applied
