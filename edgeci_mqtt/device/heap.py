"""Giving freed memory back to the system.

glibc keeps memory freed by large temporaries (building models, profiling, activations
of a request) in its heap; on a board with 1 GB that is memory nothing else can use. A
device agent releases it after start-up and whenever its worker falls idle after work.
"""

from __future__ import annotations

import contextlib
import ctypes

__all__ = ["keep_heap_small", "release_heap"]

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


def release_heap() -> None:
    """``malloc_trim(0)`` where glibc offers it (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def keep_heap_small() -> None:
    """One glibc heap for all threads (each would otherwise get an arena of its own, whose
    freed pages linger apart from the others'): a device agent stays smaller, idle and at
    its peak, at the same speed. (Mapping every large buffer on its own cuts the peak a
    little more but slows the model: each activation faults in anew.) Measurements in
    docs/RUNTIME.md, weights. Call it first, before other threads start."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1)
