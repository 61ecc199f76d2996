"""Device profiles: how fast a device runs each kind of stage, as measured on boot.

A profile is a handful of throughputs measured with real convolutions and pools (not
a constant from a datasheet; :mod:`edgeci_mqtt.profiling` measures them), small enough
to publish in a birth message. The planner prices any tile on any device with
:meth:`DeviceProfile.work_seconds` over the tile's :class:`OpWork` list, and the
simulator uses the same numbers, so a measured profile is the one source of compute
speed everywhere.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import EdgeCIError

Floats = NDArray[np.float64]

__all__ = ["ELEMENTWISE_KINDS", "MADE_KIND", "POOL_KINDS", "DeviceProfile"]

MAX_PROBE = 1 << 30
"""Largest probe depth or side a profile may name."""

ELEMENTWISE_KINDS: tuple[str, ...] = ("bn", "relu", "add", "fc")
"""Priced by bytes read and written (``fc``: a batch-one fully connected layer, bound by
reading its weights)."""
MADE_KIND = "made"
"""Bytes/s at which the device makes fully connected weight rows it lacks (optional: a
profile measured before it was priced leaves making free)."""
POOL_KINDS: tuple[str, ...] = ("maxpool", "avgpool")
"""Priced by window elements read, at a rate that depends on the window's area."""


def _positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _interpolate(points: tuple[float, ...], value: float) -> tuple[int, float]:
    """Index ``i`` and weight ``t`` with ``value`` between ``points[i]`` and ``points[i+1]``
    (clamped at both ends)."""
    if value <= points[0]:
        return 0, 0.0
    if value >= points[-1]:
        return len(points) - 2, 1.0
    i = bisect.bisect_right(points, value) - 1
    return i, (value - points[i]) / (points[i + 1] - points[i])


@dataclass(frozen=True)
class DeviceProfile:
    """Measured speeds of one device running with ``threads`` torch threads.

    ``conv_rates[i][j]`` is the FLOP/s of a convolution with reduction depth
    ``conv_depths[i]`` (``in_channels / groups * kh * kw``) and output side
    ``conv_sides[j]``, interpolated bilinearly in log-depth and log-side (a strip
    tile counts as the square of the same area). ``rates`` holds bytes/s for the
    elementwise kinds; ``pool_rates[kind]`` holds (window area, window elements/s)
    pairs. Every op also pays ``op_overhead_s`` (dispatch, cropping, padding).
    """

    conv_depths: tuple[int, ...]
    conv_sides: tuple[int, ...]
    conv_rates: tuple[tuple[float, ...], ...]
    rates: Mapping[str, float] = field(hash=False)
    pool_rates: Mapping[str, tuple[tuple[int, float], ...]] = field(hash=False)
    op_overhead_s: float
    threads: int = 1

    def __post_init__(self) -> None:
        if len(self.conv_depths) < 2 or len(self.conv_sides) < 2:
            raise EdgeCIError("a device profile needs at least two probe depths and sides")
        for name, probes in (("conv_depths", self.conv_depths), ("conv_sides", self.conv_sides)):
            # interpolation takes their logarithms and divides by their gaps
            if not (probes[0] > 0 and all(a < b <= MAX_PROBE for a, b in itertools.pairwise(probes))):
                raise EdgeCIError(f"{name} {probes} is not increasing positive (at most {MAX_PROBE})")
        if self.threads < 1:
            raise EdgeCIError(f"a device profile needs at least one thread, not {self.threads}")
        if len(self.conv_rates) != len(self.conv_depths) or any(
            len(row) != len(self.conv_sides) or not all(math.isfinite(v) and v > 0 for v in row)
            for row in self.conv_rates
        ):
            raise EdgeCIError("device profile convolution rates do not match its depths and sides")
        missing = [k for k in ELEMENTWISE_KINDS if not _positive(self.rates.get(k, 0))]
        missing += [
            k for k in POOL_KINDS if not self.pool_rates.get(k) or not all(_positive(r) for _, r in self.pool_rates[k])
        ]
        if not math.isfinite(self.op_overhead_s) or self.op_overhead_s < 0:
            raise EdgeCIError(f"device profile overhead {self.op_overhead_s} is not a finite non-negative number")
        if missing:
            raise EdgeCIError(f"device profile lacks positive rates for {', '.join(missing)}")

    def conv_rate(self, depth: int, pixels: int) -> float:
        """FLOP/s of a convolution with this reduction depth and output pixels per channel."""
        i, t = _interpolate(tuple(math.log(d) for d in self.conv_depths), math.log(max(depth, 1)))
        j, u = _interpolate(tuple(math.log(s) for s in self.conv_sides), 0.5 * math.log(max(pixels, 1)))
        r = self.conv_rates
        return (1 - t) * ((1 - u) * r[i][j] + u * r[i][j + 1]) + t * ((1 - u) * r[i + 1][j] + u * r[i + 1][j + 1])

    def pool_rate(self, kind: str, window: int) -> float:
        """Window elements/s of a pool with this window area (linear between probes)."""
        table = self.pool_rates[kind]
        i, t = _interpolate(tuple(float(a) for a, _ in table), float(window)) if len(table) > 1 else (0, 0.0)
        return table[i][1] if len(table) == 1 else (1 - t) * table[i][1] + t * table[i + 1][1]

    def op_seconds(self, op: OpWork) -> float:
        if op.kind == "conv":
            return self.op_overhead_s + op.flops / self.conv_rate(op.depth, op.pixels)
        if op.kind in POOL_KINDS:
            return self.op_overhead_s + op.flops / self.pool_rate(op.kind, op.depth)
        return self.moving_seconds(op.kind, op.bytes)

    def moving_seconds(self, kind: str, moved: int) -> float:
        """Seconds of an elementwise op (or a batch-one fully connected layer) that reads and
        writes ``moved`` bytes."""
        return self.op_overhead_s + moved / self.rates[kind]

    def making_seconds(self, made: int) -> float:
        """Seconds to make ``made`` bytes of fully connected weight rows (0 if not measured)."""
        rate = self.rates.get(MADE_KIND)
        return made / rate if made and rate else 0.0

    def op_seconds_array(self, kind: str, depth: int, flops: Floats, moved: Floats, pixels: Floats) -> Floats:
        """:meth:`op_seconds` for many sizes of one op at once (NumPy arrays)."""
        if kind == "conv":
            return self.op_overhead_s + flops / self.conv_rate_array(depth, pixels)
        if kind in POOL_KINDS:
            return self.op_overhead_s + flops / self.pool_rate(kind, depth)
        return self.op_overhead_s + moved / self.rates[kind]

    def conv_rate_array(self, depth: int, pixels: Floats) -> Floats:
        """:meth:`conv_rate` for many output sizes at once."""
        i, t = _interpolate(tuple(math.log(d) for d in self.conv_depths), math.log(max(depth, 1)))
        log_sides = np.log(np.array(self.conv_sides, dtype=np.float64))
        side = 0.5 * np.log(np.maximum(pixels, 1.0))
        low = np.interp(side, log_sides, np.array(self.conv_rates[i]))
        high = np.interp(side, log_sides, np.array(self.conv_rates[i + 1]))
        return (1 - t) * low + t * high

    def work_seconds(self, ops: Iterable[OpWork]) -> float:
        return sum(self.op_seconds(op) for op in ops)

    def scaled(self, share: float) -> DeviceProfile:
        """This profile on a device with ``share`` of this one's compute (a CPU quota)."""
        return DeviceProfile(
            conv_depths=self.conv_depths,
            conv_sides=self.conv_sides,
            conv_rates=tuple(tuple(v * share for v in row) for row in self.conv_rates),
            rates={k: v * share for k, v in self.rates.items()},
            pool_rates={k: tuple((a, r * share) for a, r in v) for k, v in self.pool_rates.items()},
            op_overhead_s=self.op_overhead_s / share,
            threads=self.threads,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "conv_depths": list(self.conv_depths),
            "conv_sides": list(self.conv_sides),
            "conv_rates": [list(row) for row in self.conv_rates],
            "rates": dict(self.rates),
            "pool_rates": {k: [[a, r] for a, r in v] for k, v in self.pool_rates.items()},
            "op_overhead_s": self.op_overhead_s,
            "threads": self.threads,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceProfile:
        try:
            return cls(
                conv_depths=tuple(int(d) for d in data["conv_depths"]),
                conv_sides=tuple(int(s) for s in data["conv_sides"]),
                conv_rates=tuple(tuple(float(v) for v in row) for row in data["conv_rates"]),
                rates={str(k): float(v) for k, v in data["rates"].items()},
                pool_rates={str(k): tuple((int(a), float(r)) for a, r in v) for k, v in data["pool_rates"].items()},
                op_overhead_s=float(data["op_overhead_s"]),
                threads=int(data["threads"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:  # int(inf): OverflowError
            raise EdgeCIError(f"malformed device profile: {exc!r}") from exc
