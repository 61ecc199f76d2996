"""How the replay times a message between two resources (either may be the orchestrator).

A message between a device and the orchestrator crosses one link pair
(:meth:`~edgeci_mqtt.sim.state.State.transfer`). One between two devices is stored and
forwarded by the broker: up the source's link and into the broker host, then, once the
broker has it, out of the broker host and down the target's link (two messages' worth of
latency and envelope). Either way a message costs
:data:`~edgeci_mqtt.planner.environment.MESSAGE_OPS` of CPU on each end (packing and
publishing it, receiving and unpacking it), nothing when source and target are the same
device. A map of a plan that compresses goes encoded as the sender would send it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.planner.costs import message_seconds
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.sim.state import State, Tile
from edgeci_mqtt.timeline import ORCHESTRATOR
from edgeci_mqtt.wire.compression import (
    CODECS,
    ZEROS_DECODE_PASSES,
    ZEROS_ENCODE_PASSES,
    compressed_size,
    send_seconds,
)

__all__ = ["Messages", "Then"]

Then = Callable[[float], None]
"""What follows a message, given the time it arrives."""


class Messages:
    """The messages of one replay: booked on ``state``'s links and CPUs as ``plan`` sends them."""

    def __init__(self, state: State, plan: Plan) -> None:
        self.state, self.env, self.plan = state, state.env, plan

    def profile(self, resource: str) -> DeviceProfile:
        return self.env.orchestrator if resource == ORCHESTRATOR else self.env.device(resource).profile

    def message_cpu(self, resource: str) -> float:
        """CPU one message costs ``resource`` (sending or receiving it)."""
        return message_seconds(self.profile(resource))

    def send(
        self,
        source: str,
        target: str,
        t: float,
        nbytes: int,
        tile: Tile,
        then: Then,
        boundary: int | None = None,
        note: str = "",
    ) -> None:
        """``nbytes`` from ``source`` to ``target`` (either may be the orchestrator), then ``then(arrival)``."""
        if source == target:
            then(t)
        elif ORCHESTRATOR in (source, target):
            if source != ORCHESTRATOR:  # the orchestrator forwards rows as they came
                t, nbytes, then = self.coded(source, target, t, nbytes, tile, then, boundary)
            t = self.state.busy(source, "encode", t, self.message_cpu(source), tile)
            device = target if source == ORCHESTRATOR else source
            arrival = self.state.transfer(device, t, nbytes, source == ORCHESTRATOR, tile, note)
            self.state.at(arrival, partial(self.landed, target, arrival, tile, then))
        else:
            self.forward(source, target, t, nbytes, tile, then, boundary)

    def landed(self, target: str, arrival: float, tile: Tile, then: Then) -> None:
        """A message is on ``target`` at ``arrival``: its CPU is booked, then ``then``."""
        handled = self.state.busy(target, "decode", arrival, self.message_cpu(target), tile)
        self.state.at(handled, partial(then, handled))

    def coded(
        self, source: str, target: str, t: float, nbytes: int, tile: Tile, then: Then, boundary: int | None
    ) -> tuple[float, int, Then]:
        """A map at ``boundary`` of a plan that compresses goes as the sender would send it
        (:func:`~edgeci_mqtt.wire.compression.choose_codec` from the boundary's share of
        non-zeros): encoded on the sender's CPU, fewer bytes, decoded on the receiver's.
        Returns when the bytes can leave, how many, and what to do on arrival."""
        density = self.plan.densities[boundary] if boundary is not None and self.plan.densities else 1.0
        if not self.plan.compress or density >= 1.0:
            return t, nbytes, then
        view = self.env.device(source)
        rate = view.profile.rates["relu"]
        codec = min(CODECS, key=lambda c: send_seconds(nbytes // 4, density, c, view.link.bytes_per_s, rate))
        if codec == "raw":
            return t, nbytes, then
        relu = 2 * nbytes
        ready = self.state.busy(source, "encode", t, ZEROS_ENCODE_PASSES * relu / rate, tile)
        decode = ZEROS_DECODE_PASSES * relu / self.profile(target).rates["relu"]

        def decoded(arrival: float) -> None:
            then(self.state.busy(target, "decode", arrival, decode, tile))

        return ready, compressed_size(nbytes // 4, density, codec), decoded

    def forward(
        self, source: str, target: str, t: float, nbytes: int, tile: Tile, then: Then, boundary: int | None = None
    ) -> None:
        """Device to device through the broker, stored and forwarded there; ``then(arrival)``
        (compressed as :meth:`coded` says). The message costs the sender's CPU before it
        leaves and the receiver's after it lands (:func:`~edgeci_mqtt.planner.costs.message_seconds`)."""
        t, nbytes, then = self.coded(source, target, t, nbytes, tile, then, boundary)
        t = self.state.busy(source, "encode", t, self.message_cpu(source), tile)
        at_broker = self.state.transfer(source, t, nbytes, False, tile, f"to {target}")

        def onwards() -> None:
            arrival = self.state.transfer(target, at_broker, nbytes, True, tile, f"from {source}")
            self.state.at(arrival, partial(self.landed, target, arrival, tile, then))

        self.state.at(at_broker, onwards)
