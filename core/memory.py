"""How glibc hands freed memory back: kept for loops that allocate the same large arrays image after
image (evaluation), returned at once for jobs whose peak is what matters (a build)."""

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
# Blocks from this size on are mapped on their own, and unmapped when freed.
_RETURNED_FROM = 1 << 20

_done = False


def _mallopt():
    """glibc's mallopt, or None (another C library, another system)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt


def return_freed_memory() -> bool:
    """Ask glibc to map every block of 1 MB or more on its own, so that freeing it returns it to the
    OS at once. Process-wide; the ``isnet build`` and ``isnet compare`` commands set it.

    By default glibc raises its mapping threshold to the size of each large block freed (up to
    32 MB), and blocks under it then come from the heap, where what is freed mostly stays: a build
    loads the same model graph five or six times (ONNX protobuf copies, sessions), and the memory
    of those copies piled up under the next step's. For the real ISNet at 1024x1024 the peak RSS of
    an int8 build went from 3.41 GB to 2.65 GB with this, at the same build time (2026-12-07,
    ``bench/README.md``). Returns whether the setting took.
    """
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, _RETURNED_FROM))


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MB for reuse instead of returning them to the OS.

    By default glibc hands blocks above a (dynamic) threshold back to the kernel when they are
    freed, and the next image's arrays of the same size fault every page in again. Scoring a
    500-image folder spent 1.4 of its 4.8 s in the kernel that way (``isnet eval``, 2026-12-02;
    ``bench/README.md``); with freed memory kept, 0.1 s. The price is freed memory held by the
    process: up to 256 MB per glibc arena (one for the main thread, more with threads that allocate).
    The setting is process-wide and stays on: the ``isnet eval`` command sets it (library code leaves
    it alone). Returns whether the setting took (glibc only; elsewhere it does nothing). Forked
    worker processes inherit it.
    """
    global _done
    if _done:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _done
