"""Keeping freed memory in the process for loops that allocate the same large arrays image after image."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 256 << 20

_done = False


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MB for reuse instead of returning them to the OS.

    By default glibc hands blocks above a (dynamic) threshold back to the kernel when they are
    freed, and the next image's arrays of the same size fault every page in again. Scoring a
    500-image folder spent 1.4 of its 4.8 s in the kernel that way (``isnet eval``, 2026-12-02;
    ``bench/README.md``); with freed memory kept, 0.1 s. The price is freed memory held by the
    process: up to 256 MB per glibc arena (one for the main thread, more with threads that allocate).
    The setting is process-wide and stays on. Returns whether the setting took (glibc only; elsewhere it does nothing).
    Forked worker processes inherit it.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _done
