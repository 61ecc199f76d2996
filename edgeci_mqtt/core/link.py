"""A device's link to the broker, as devices announce it and the planner prices it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeci_mqtt.errors import EdgeCIError

__all__ = ["Link"]


@dataclass(frozen=True)
class Link:
    """A full-duplex link to the broker's switch: bandwidth each way and one-way latency."""

    bandwidth_mbit: float
    latency_ms: float

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_mbit * 1e6 / 8

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1e3

    def to_dict(self) -> dict[str, float]:
        return {"bandwidth_mbit": self.bandwidth_mbit, "latency_ms": self.latency_ms}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Link:
        """A link as devices publish it; :class:`EdgeCIError` unless bandwidth > 0 and latency >= 0."""
        try:
            bandwidth, latency = float(data["bandwidth_mbit"]), float(data["latency_ms"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeCIError(f"malformed link {data!r:.200}: {exc!r}") from exc
        if not (math.isfinite(bandwidth) and bandwidth > 0 and math.isfinite(latency) and latency >= 0):
            raise EdgeCIError(f"link {data!r:.200} is not a positive bandwidth and latency")
        return cls(bandwidth, latency)
