"""CPU training: let glibc's allocator keep the memory a step frees, so the next step reuses it.

A training step on the CPU allocates and frees the same buffers every step (activations, gradients,
temporaries). With glibc's defaults, buffers above the mmap threshold (128 KiB, raised on the fly up
to the largest buffer freed so far) and the free top of the heap beyond the trim threshold go back to
the kernel when freed, and the next step touches them again page by page: a minor page fault and a
zero-filled page every 4 KiB. The routed MLP of the performance suite with 128 blocks per layer (its
gradients alone are 6 MiB) took about 500-800 page faults a step this way. PyTorch's tuning guide
recommends a caching allocator (jemalloc, tcmalloc) through ``LD_PRELOAD`` for the same reason; this
module gets the effect without one, through glibc's own ``mallopt``:

* ``M_MMAP_THRESHOLD`` fixed at 32 MiB (glibc's maximum): buffers below it come from the heap;
* ``M_TRIM_THRESHOLD`` at 1 GiB: the free top of the heap stays with the process.

Measured on this project's CPU (BENCHMARKS.md, issue 33): the faults fall to about 1 a step, but the
step times moved within the machine's noise (median ratios 0.93-1.09 over five process pairs), so it is
opt-in (``TrainConfig.keep_cpu_memory``, ``RoutingTrainer(keep_cpu_memory=True)``). The process then
keeps its peak heap (as PyTorch's CUDA caching allocator keeps its peak on a GPU). The setting is
process-wide and lasts to the end of the process; :func:`keep_freed_cpu_memory` sets it once and does
nothing where the C library is not glibc (musl, macOS, Windows) or under an allocator loaded with
``LD_PRELOAD`` (jemalloc, tcmalloc, mimalloc: they already cache).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

#: glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: what :func:`keep_freed_cpu_memory` sets (bytes): the mmap threshold at glibc's 64-bit maximum
SETTINGS = {"mmap_threshold": 32 * 1024 * 1024, "trim_threshold": 1024 * 1024 * 1024}

_state: dict[str, object] = {"applied": None}


def _glibc():
    """glibc as a ctypes library, or None where the process does not run on glibc's malloc."""
    if not sys.platform.startswith("linux"):
        return None
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return None  # a caching allocator replaces malloc: nothing to tune
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None  # not glibc (e.g. musl has neither gnu_get_libc_version nor a working mallopt)
    version.restype = ctypes.c_char_p
    return libc if version() else None


def keep_freed_cpu_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process (module doc); once per process.

    Returns whether the setting is in effect (False where it does not apply). Logged once at INFO.
    """
    if _state["applied"] is not None:
        return bool(_state["applied"])
    libc = _glibc()
    ok = False
    if libc is not None:
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, SETTINGS["mmap_threshold"])) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, SETTINGS["trim_threshold"]))
    _state["applied"] = ok
    if ok:
        logger.info("CPU training: glibc malloc keeps freed memory (mmap threshold %d MiB, trim threshold %d MiB) so "
                    "every step reuses its buffers instead of page-faulting them again (TrainConfig.keep_cpu_memory)",
                    SETTINGS["mmap_threshold"] >> 20, SETTINGS["trim_threshold"] >> 20)
    return ok


def cpu_memory_kept() -> bool:
    """Whether :func:`keep_freed_cpu_memory` has changed this process's allocator."""
    return bool(_state["applied"])
