"""A device's link to the broker, as devices announce it and the planner prices it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeci_mqtt.errors import EdgeCIError

__all__ = ["Link", "Medium"]


@dataclass(frozen=True)
class Medium:
    """A shaped link several devices sit behind (one Wi-Fi access point, one switch uplink):
    their transfers to and from the broker share its ``bandwidth_mbit`` each way."""

    name: str
    bandwidth_mbit: float

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_mbit * 1e6 / 8


@dataclass(frozen=True)
class Link:
    """A full-duplex link to the broker's switch: bandwidth each way and one-way latency,
    and the shared medium it sits behind, if any (its own bandwidth then caps only this
    device; the medium's caps the devices behind it together)."""

    bandwidth_mbit: float
    latency_ms: float
    medium: Medium | None = None

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_mbit * 1e6 / 8

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1e3

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"bandwidth_mbit": self.bandwidth_mbit, "latency_ms": self.latency_ms}
        if self.medium is not None:
            data["medium"] = {"name": self.medium.name, "bandwidth_mbit": self.medium.bandwidth_mbit}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Link:
        """A link as devices publish it; :class:`EdgeCIError` unless bandwidth > 0 and latency >= 0
        (and a medium, if named, has a name and a positive bandwidth)."""
        try:
            bandwidth, latency = float(data["bandwidth_mbit"]), float(data["latency_ms"])
            shared = data.get("medium")
            medium = None if shared is None else Medium(str(shared["name"]), float(shared["bandwidth_mbit"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EdgeCIError(f"malformed link {data!r:.200}: {exc!r}") from exc
        if not (math.isfinite(bandwidth) and bandwidth > 0 and math.isfinite(latency) and latency >= 0):
            raise EdgeCIError(f"link {data!r:.200} is not a positive bandwidth and latency")
        if medium is not None and not (
            medium.name and math.isfinite(medium.bandwidth_mbit) and medium.bandwidth_mbit > 0
        ):
            raise EdgeCIError(f"link {data!r:.200}: a medium needs a name and a positive bandwidth")
        return cls(bandwidth, latency, medium)
