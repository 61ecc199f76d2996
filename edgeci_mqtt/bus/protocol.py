"""The bus seam: what the roles need from MQTT, and nothing else.

Device agents, orchestrators and clients talk to a :class:`Bus`: connect, publish,
subscribe, and a queue of small events (:class:`Inbound`, :class:`Connected`,
:class:`Disconnected`). :class:`~edgeci_mqtt.bus.mqtt.MqttBus` is the real
one (paho, MQTT v5); :class:`~edgeci_mqtt.bus.memory.MemoryBroker` gives
in-process buses with the broker semantics the runtime relies on, so the roles'
decisions are tested without a broker. Payloads over one frame are split into chunk
frames by :func:`checked_frames`, the same on every bus.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from edgeci_mqtt.errors import TransportError
from edgeci_mqtt.wire import MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, frames

__all__ = ["Bus", "Connected", "Disconnected", "Event", "Inbound", "checked_frames", "events_until"]


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True)
class Connected:
    """(Re)connected and re-subscribed: time to (re)publish a birth message."""


@dataclass(frozen=True)
class Disconnected:
    """The session ended; ``final``: it will not come back (another connection took its
    client id over), so :func:`events_until` raises instead of waiting."""

    reason: str
    final: bool = False


Event = Inbound | Connected | Disconnected


class Bus(Protocol):
    """One MQTT v5 session. Read :attr:`events`; :meth:`publish` from any thread."""

    client_id: str
    events: queue.Queue[Event]

    def will(self, topic: str, payload: bytes) -> None:
        """Retained message the broker publishes if this session ends abnormally (before :meth:`start`)."""

    def start(self, timeout: float = 10.0) -> None:
        """Connect and wait up to ``timeout`` for the first session (:class:`TransportError` if none)."""

    def stop(self) -> None:
        """Disconnect cleanly (no will)."""

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now and after every reconnection."""

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        wait: float | None = None,
    ) -> None:
        """Publish ``payload`` (in chunk frames if it is over one frame); ``wait``: seconds to wait for delivery."""


def checked_frames(topic: str, payload: bytes, retain: bool) -> list[bytes]:
    """``payload`` as frames a broker accepts; retained payloads must fit one frame."""
    parts = frames(payload)
    if retain and len(parts) > 1:
        raise TransportError(f"a retained payload on {topic} must fit in {MAX_PAYLOAD_BYTES} bytes")
    if any(len(part) > MAX_FRAME_BYTES for part in parts):  # frames() guarantees this; never send one
        raise TransportError(f"refusing to publish an oversize frame on {topic}")
    return parts


def events_until(
    bus: Bus,
    stop: threading.Event | None = None,
    deadline: float | None = None,
    poll_s: float = 0.2,
    tick: Callable[[], None] | None = None,
) -> Iterator[Event]:
    """The bus's events until ``stop`` is set or ``deadline`` (a ``perf_counter`` time) passes;
    :class:`TransportError` once the session is over for good. ``tick`` runs on the reading
    thread about every ``poll_s``, events or not (what must expire on a clock)."""
    ticked = time.perf_counter()
    while not (stop is not None and stop.is_set()):
        if tick is not None and time.perf_counter() - ticked >= poll_s:
            ticked = time.perf_counter()
            tick()
        wait = poll_s
        if deadline is not None:
            wait = min(wait, deadline - time.perf_counter())
            if wait <= 0:
                return
        try:
            event = bus.events.get(timeout=wait)
        except queue.Empty:
            continue
        if isinstance(event, Disconnected) and event.final:
            bus.events.put(event)  # every later reader learns it too
            raise TransportError(f"{bus.client_id}: {event.reason}")
        yield event
