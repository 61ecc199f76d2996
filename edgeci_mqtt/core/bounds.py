"""Annotations that bound a value when it comes off the wire (``Annotated[T, MaxLen(8)]``).

They are plain markers, apart from the wire codecs that read them
(:mod:`edgeci_mqtt.wire.values`), so that the planner's own types, which travel in
messages too (a device's held tail rows), can say how large they may be.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Id", "MaxLen", "Range"]


@dataclass(frozen=True)
class Range:
    """A number in ``[low, high]``."""

    low: float
    high: float


@dataclass(frozen=True)
class MaxLen:
    """At most ``n`` characters, bytes, items or entries."""

    n: int


class Id:
    """A string that must be usable as one topic segment (and so is safe to log)."""
