"""The replay's clock and servers: the event queue, the timeline, every link direction and CPU.

Network model. The orchestrator sits on the broker host. Every task travels broker
host link (down) -> device link (down); every result device link (up) -> broker host
link (up). Links are full duplex; each direction of each link is a FIFO server at its
bandwidth, so concurrent transfers on the broker link queue behind one another
(contention), and a transfer crosses both hops cut-through: it can finish no earlier
than either hop allows, and each hop is busy for the message's bytes at its own rate
(a slow device trickling a result in does not hold the broker's link for the others).
Each message pays both links' one-way latencies and a fixed envelope
(:data:`MESSAGE_OVERHEAD_BYTES`). A device behind a shared medium has one more hop between
its link and the broker's: the medium, one FIFO server per direction shared by every
device behind it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.planner.environment import MESSAGE_OVERHEAD_BYTES, Environment
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval

__all__ = ["NO_TILE", "State", "Tile"]

Tile = tuple[FusedBlock | None, TileRegion | None]
"""Which task's tile an interval is for (block, output region), if any."""
NO_TILE: Tile = (None, None)


@dataclass
class _Fifo:
    """One server: a link direction at ``rate`` bytes/s, or a CPU (rate 1: seconds in)."""

    rate: float
    free: float = 0.0

    def reserve(self, ready: float, amount: float) -> tuple[float, float]:
        start = max(ready, self.free)
        self.free = start + amount / self.rate
        return start, self.free


@dataclass
class State:
    env: Environment
    events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    timeline: list[Interval] = field(default_factory=list)
    seq: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]

    def __post_init__(self) -> None:
        link = self.env.broker_link
        self.broker_down, self.broker_up = _Fifo(link.bytes_per_s), _Fifo(link.bytes_per_s)
        self.down = {v.name: _Fifo(v.link.bytes_per_s) for v in self.env.devices}
        self.up = {v.name: _Fifo(v.link.bytes_per_s) for v in self.env.devices}
        media = {v.link.medium for v in self.env.devices if v.link.medium is not None}
        self.medium_down = {m.name: _Fifo(m.bytes_per_s) for m in media}
        self.medium_up = {m.name: _Fifo(m.bytes_per_s) for m in media}
        self.cpu = {v.name: _Fifo(1.0) for v in self.env.devices}
        self.cpu[ORCHESTRATOR] = _Fifo(1.0)

    def at(self, time: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (time, next(self.seq), action))

    def run(self) -> None:
        while self.events:
            _, _, action = heapq.heappop(self.events)
            action()

    def busy(
        self, resource: str, kind: str, ready: float, seconds: float, tile: Tile = NO_TILE, note: str = ""
    ) -> float:
        start, end = self.cpu[resource].reserve(ready, seconds)
        self.timeline.append(Interval(resource, kind, start, end, *tile, note))
        return end

    def transfer(
        self, device: str, ready: float, nbytes: int, downward: bool, tile: Tile = NO_TILE, note: str = ""
    ) -> float:
        """Arrival time of a message between the broker host (and the orchestrator on it) and ``device``."""
        size = nbytes + MESSAGE_OVERHEAD_BYTES
        medium = self.env.device(device).link.medium
        if downward:
            hops = [self.broker_down, *([self.medium_down[medium.name]] if medium else []), self.down[device]]
        else:
            hops = [self.up[device], *([self.medium_up[medium.name]] if medium else []), self.broker_up]
        start, end = hops[0].reserve(ready, size)
        hop_start = start
        for hop in hops[1:]:  # busy for its own time only: a slow hop before it trickling bytes
            hop_start = max(hop_start, hop.free)  # in does not block it for others
            hop.free = hop_start + size / hop.rate
            end = max(end, hop.free)
        self.timeline.append(Interval(device, "receive" if downward else "send", start, end, *tile, note))
        latency = self.env.device(device).link.latency_s + self.env.broker_link.latency_s
        return end + latency
