"""Keep freed memory in the process, so each training step reuses pages instead of faulting in new ones.

glibc's malloc serves every block above a threshold (at most 32 MB) with its own mmap and unmaps it
when freed. A training step over a long window allocates and frees hundreds of MB of activations,
so every step the kernel maps and zeroes them again: on CPU that made the sub-quadratic backbones
2-3x slower per token at L=16384 than at L=4096 (experiments/backbone_scaling). With mmap off and a
high trim threshold, freed blocks stay in the heap for the next step; the resident size stays at its
peak. Linux/glibc only, a no-op elsewhere; `FORECAST_MALLOC=system` leaves malloc as it is.
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8  # glibc's mallopt parameters (malloc.h)
KEEP = 2**31 - 1  # bytes: mallopt takes an int


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory; True when it accepted both settings."""
    if os.environ.get("FORECAST_MALLOC") == "system":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # one arena: a block freed by any thread goes back to the heap the next step allocates from
    settings = [(M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP), (M_TOP_PAD, KEEP)]
    return all(mallopt(key, value) for key, value in settings)
