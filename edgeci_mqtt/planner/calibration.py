"""A device's speed, corrected by the work it actually did.

A profile is two seconds of micro-benchmarks at boot, and identical devices under the
same CPU quota can come out of them far apart: the auction, trusting them, gives the
"fastest" device more rows than the others although it is no faster, and it finishes
last, on every request (docs/RUNTIME.md, speed corrected by the work). Real boards
drift the same way (thermal throttling, a background job).

So a device compares each piece of work it runs with what its boot profile
predicted and keeps a running ratio, each piece weighted by the seconds it took (a
1 ms task says little about a device under a CPU quota; and a profile that is far too
fast predicts almost nothing, so predicted seconds would never add up). Once the ratio has moved
far enough from the one announced, the device announces a profile scaled by it:
its bids (and so the awards) and the simulator use the corrected speed. What it
compares with is the profile's price of the exact ops it ran, the price the simulator
replays plans with (not the full-width strips bids are priced with, which overstate a
tile's edges and a grid's tiles by up to 1.7x and so had pulled the correction towards
"fast": docs/PLANNER.md). The threshold, 5 %, is wide enough that every announcement
(each device prices its lots anew, each orchestrator awards afresh) is rare, and narrow
enough that it does not leave a tenth of the error in place (docs/RUNTIME.md, speed
corrected by the work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SpeedCalibration"]

MAX_FACTOR = 4.0
"""The furthest a device may correct its boot profile, either way: a slower run than
that is a stall (paging, a stopped process), not the device's speed."""


@dataclass
class SpeedCalibration:
    """Measured over predicted compute time of one device, learned from its work.

    ``half_life_s``: seconds of work after which an observation counts half;
    ``warmup_s``: seconds of work before any correction is announced;
    ``threshold``: the relative change from the announced factor worth announcing.
    """

    half_life_s: float = 3.0
    warmup_s: float = 0.5
    threshold: float = 0.05
    announced: float = 1.0
    _log_ratio: float = 0.0
    _work_s: float = 0.0

    @property
    def factor(self) -> float:
        """How many times longer than its boot profile says this device takes (the running estimate)."""
        return math.exp(self._log_ratio)

    def observe(self, predicted_s: float, measured_s: float) -> float | None:
        """Count one piece of work; the factor to announce now, or None if the announced one still holds."""
        if not (predicted_s > 0 and measured_s > 0 and math.isfinite(predicted_s) and math.isfinite(measured_s)):
            return None
        bound = math.log(MAX_FACTOR)
        ratio = max(-bound, min(bound, math.log(measured_s / predicted_s)))
        weight = 1.0 - 0.5 ** (measured_s / self.half_life_s)
        self._log_ratio += weight * (ratio - self._log_ratio)  # from 0: the boot profile is the prior
        self._work_s += measured_s
        if self._work_s < self.warmup_s or abs(self.factor / self.announced - 1.0) <= self.threshold:
            return None
        self.announced = self.factor
        return self.announced
