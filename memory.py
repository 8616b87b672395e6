"""Process memory: keeps the long-running processes' resident size flat.

glibc gives every thread that contends for the allocator a malloc arena of its own, up to eight
per core, and memory freed in one arena is not reused by the others: a web process with eight
threads grows arena by arena under steady traffic and keeps what it grew. Two arenas are
enough for threads that spend their time waiting on the network and the disk. On a C library
without ``mallopt`` (musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process; True when the C library took it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
