"""A tail placed on devices is kept only while it is measured to pay (pure).

The planner places ``flow``'s tail from estimates: where the final tiles are, each
device's fc speed, the slices and logits sent on. An estimate can be wrong where the
simulator cannot see (a device whose tail competes with another request's steps, a finisher
whose link is busier than it announced), and a tail that is slower on the devices than on
the orchestrator costs every request. So the orchestrator measures it: the seconds each split
request took from its plan to its answer, by where its tail ran, and serves the next request
with the placement whose recent median is lower. To know both, it tries the other placement
now and then: every :data:`EAGER` th request until each has :data:`MIN_SEEN` measurements,
then every :data:`EVERY` th (a cluster changes; a verdict must be able to turn back).
docs/PLANNER.md (tail placement measured) says why these numbers.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

__all__ = ["EAGER", "EVERY", "MIN_SEEN", "WINDOW", "MeasuredTail"]

WINDOW = 5
"""Measurements kept per placement: the median of the last five, robust to one slow request."""
MIN_SEEN = 3
"""Measurements of each placement before the planner's word is overruled."""
EAGER = 3
"""While a placement has fewer than :data:`MIN_SEEN` measurements, one request in this many tries it."""
EVERY = 10
"""Afterwards, one request in this many tries the placement not preferred (a tenth of the
requests at most pay for a placement that lost)."""


@dataclass
class MeasuredTail:
    """Seconds of recent split requests by tail placement (on the devices, as planned, or on
    the orchestrator), and which placement the next request is served with."""

    on_devices: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    on_orchestrator: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    served: int = 0

    def prefers_devices(self) -> bool:
        """The planner's placement, unless both have been measured and the orchestrator's median is lower."""
        if min(len(self.on_devices), len(self.on_orchestrator)) < MIN_SEEN:
            return True
        return statistics.median(self.on_devices) <= statistics.median(self.on_orchestrator)

    def next_on_devices(self) -> bool:
        """Whether the next split request runs its tail on the devices (counts it as served)."""
        self.served += 1
        prefer = self.prefers_devices()
        other = self.on_orchestrator if prefer else self.on_devices
        every = EAGER if len(other) < MIN_SEEN else EVERY
        return prefer != (self.served % every == 0)

    def record(self, on_devices: bool, seconds: float) -> bool:
        """A split request served with its tail there took ``seconds`` from its plan to its
        answer; True if that turns the verdict (worth a line in the log)."""
        before = self.prefers_devices()
        (self.on_devices if on_devices else self.on_orchestrator).append(seconds)
        return self.prefers_devices() != before

    def __str__(self) -> str:
        ms = [f"{1e3 * statistics.median(s):.0f} ms" if s else "none" for s in (self.on_devices, self.on_orchestrator)]
        return f"median on the devices {ms[0]}, on the orchestrator {ms[1]}"
