"""Giving freed memory back to the system.

glibc keeps memory freed by large temporaries (building models, profiling, activations
of a request) in its heap; on a board with 1 GB that is memory nothing else can use. A
device agent releases it after start-up and whenever its worker falls idle after work.
"""

from __future__ import annotations

import contextlib
import ctypes

__all__ = ["QUIET_S", "TRIM_AFTER_BYTES", "HeapKeeper", "keep_heap_small", "release_heap"]

TRIM_AFTER_BYTES, QUIET_S = 8 << 20, 1.0
"""After this much inbound data, the heap is given back once nothing arrived for ``QUIET_S``."""


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
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX (malloc.h)


class HeapKeeper:
    """Gives the heap back after a burst of inbound data (hostile or not) once the burst is
    over, and once more ``again_s`` later (when what it left waiting has expired), so an idle
    device returns to its idle size; never while the worker computes (the activations it
    frees between layers would fault in anew). ``release`` and ``quiet_s`` are its seams."""

    def __init__(self, again_s: float) -> None:
        self.again_s, self.release, self.quiet_s = again_s, release_heap, QUIET_S
        self._received, self._last = 0, 0.0  # bytes since the heap was last given back, last arrival
        self._again_at: float | None = None

    def arrived(self, size: int, now: float) -> None:
        self._received, self._last = self._received + size, now

    def tick(self, now: float, resting: bool) -> None:
        """On the message thread's tick: give the heap back if a burst is over and the worker rests."""
        if not resting:
            return
        if self._received >= TRIM_AFTER_BYTES and now - self._last >= self.quiet_s:
            self._received = 0
            self._again_at = self._last + self.again_s + self.quiet_s
            self.release()
        elif self._again_at is not None and now >= self._again_at:
            self._again_at = None
            self.release()
