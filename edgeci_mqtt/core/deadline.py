"""One deadline type: an instant on this host's monotonic clock, or never.

Hosts' clocks are not synchronised (boards drift by milliseconds, and many have no
real-time clock at all), so a deadline never travels as an instant: on the wire it is the
seconds left when the message is sent (0: none), and each receiver turns it back into an
instant on its own clock the moment the message arrives. One unit everywhere: seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["NEVER", "Deadline"]

SENT_AT_LEAST_S = 1e-3
"""What a deadline already passed says on the wire (0 would mean none)."""


@dataclass(frozen=True, order=True)
class Deadline:
    """``at``: a ``time.perf_counter`` instant (infinite: never)."""

    at: float = math.inf

    @classmethod
    def within(cls, seconds: float, now: float) -> Deadline:
        """``seconds`` from ``now``, as a wire field says it (0 or less: never)."""
        return cls(now + seconds) if seconds > 0 else NEVER

    @property
    def never(self) -> bool:
        return math.isinf(self.at)

    def left(self, now: float) -> float:
        """Seconds left at ``now`` (infinite: never; negative: passed)."""
        return self.at - now

    def passed(self, now: float) -> bool:
        return now > self.at

    def wire(self, now: float) -> float:
        """What to send: the seconds left (0: never; a deadline passed: a millisecond)."""
        return 0.0 if self.never else max(SENT_AT_LEAST_S, self.at - now)

    def sooner(self, other: Deadline) -> Deadline:
        return min(self, other)


NEVER = Deadline()
