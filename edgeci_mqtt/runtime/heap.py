"""Giving freed memory back to the system.

glibc keeps memory freed by large temporaries (building models, profiling, activations
of a request) in its heap; on a board with 1 GB that is memory nothing else can use. A
device agent releases it after start-up and whenever its worker falls idle after work.
"""

from __future__ import annotations

import contextlib
import ctypes

__all__ = ["release_heap"]


def release_heap() -> None:
    """``malloc_trim(0)`` where glibc offers it (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
