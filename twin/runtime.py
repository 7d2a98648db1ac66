"""Process-wide settings for a process that steps many twins: malloc's thresholds and Python's
cycle collector, both measured on a calibrator's passes.

**malloc.** A pass scores K twins' populations over their windows: tensors of K x S x T float64
numbers (64 x 17 x 256 is 2.2 MB), made and freed many times per update. glibc's malloc serves
a block above its mmap threshold from a fresh mapping, and returns the free top of its heap to
the kernel once it exceeds the trim threshold; both thresholds move with the sizes freed, and
with a pass's mix of sizes they keep landing below its tensors. Each such tensor is then new
memory from the kernel, every page faulted in and zeroed, which costs several times the
arithmetic done on it: a first_order twin's batch in a pass of 64 took hundreds of page faults
and 0.55-0.8 of its CPU time with the thresholds fixed (`bench/allocator.py` measures both).
Fixed thresholds keep such blocks in the heap for reuse: a worker keeps up to `TRIM` bytes of
freed memory instead of handing it back, and blocks above `MMAP` (larger than any tensor of a
pass) are still mapped on their own. Only glibc has `mallopt`; elsewhere nothing changes.

**The cycle collector.** A worker keeps the twins it holds in memory, about 110 objects each
that the collector tracks, besides the 170,000 of its imports (torch, SQLAlchemy). A full
collection scans them all: 160 ms with 1,000 twins, 400 ms with 5,000, every few seconds with
Python's default thresholds. The imports' objects are frozen out of its scans, and it runs
after 50,000 new allocations rather than 700, as in the API process (`app.cli`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger("tandem.runtime")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP = 32 << 20  # glibc's largest mmap threshold on 64-bit systems
TRIM = 64 << 20
GC_THRESHOLDS = (50_000, 20, 20)


def tune_allocator(mmap: int = MMAP, trim: int = TRIM) -> bool:
    """Fix malloc's mmap and trim thresholds for this process; False where it has no glibc
    `mallopt` or glibc refused the values."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, mmap) == 1 and mallopt(M_TRIM_THRESHOLD, trim) == 1
    if not done:
        log.warning("malloc refused its thresholds; tensors may be mapped anew each time")
    return done


def tune_garbage_collector() -> None:
    """Freeze what lives as long as the process (call it after the imports) out of the cycle
    collector's scans, and let it run after 50,000 new allocations rather than 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
