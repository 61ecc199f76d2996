"""An in-process broker with the MQTT semantics the runtime relies on.

It is how the roles' decisions (who gets which task, what happens when a device dies,
a result comes late or twice, a payload is hostile) are tested in one process, fast
and deterministic, without Mosquitto. What it keeps of MQTT, and nothing more:

- retained messages (an empty retained payload clears one), delivered on subscribe;
- the will, published when a session ends abnormally (:meth:`MemoryBus.crash`), not on
  a clean :meth:`MemoryBus.stop`;
- ``+``/``#`` filters (not matching ``$`` topics) and shared subscriptions
  (``$share/<group>/<filter>``) served round-robin within the group;
- per-publisher order (delivery happens in the publisher's call, under one lock);
- a maximum packet size: an oversize publish ends the sender's session, as Mosquitto does;
- a taken-over client id ends the older session;
- an ACL hook ``acl(client_id, access, topic) -> bool``: denied publishes are dropped,
  a denied subscription is not made, and every delivery (retained ones too) is checked
  against the receiver's read access.

What only a real broker can show (its ACL file, limits, restarts, wills over TCP)
is tested against Mosquitto.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edgeci_mqtt.bus.protocol import Connected, Disconnected, Event, Inbound, checked_frames
from edgeci_mqtt.wire import BROKER_MAX_PACKET_BYTES

__all__ = ["Acl", "MemoryBroker", "MemoryBus", "topic_matches"]

Acl = Callable[[str, str, str], bool]
"""``(client_id, "read" | "write", topic) -> allowed``."""


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching: ``+`` one level, ``#`` the rest; wildcards never match ``$`` topics."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    want, have = pattern.split("/"), topic.split("/")
    for i, part in enumerate(want):
        if part == "#":
            return True
        if i >= len(have) or (part != "+" and part != have[i]):
            return False
    return len(want) == len(have)


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None


class MemoryBroker:
    """The broker: make one :class:`MemoryBus` per client with :meth:`bus`."""

    def __init__(self, acl: Acl | None = None, max_packet_bytes: int = BROKER_MAX_PACKET_BYTES) -> None:
        self.acl, self.max_packet_bytes = acl, max_packet_bytes
        self._lock = threading.RLock()
        self._sessions: dict[str, MemoryBus] = {}
        self._retained: dict[str, _Message] = {}
        self._turns: dict[str, itertools.count[int]] = {}

    def bus(self, client_id: str) -> MemoryBus:
        return MemoryBus(self, client_id)

    def _allowed(self, client_id: str, access: str, topic: str) -> bool:
        return self.acl is None or self.acl(client_id, access, topic)

    def _connect(self, session: MemoryBus) -> None:
        with self._lock:
            older = self._sessions.get(session.client_id)
            if older is not None and older is not session:
                older._end("session taken over", abnormal=True)
            self._sessions[session.client_id] = session

    def _disconnect(self, session: MemoryBus) -> None:
        with self._lock:
            if self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]

    def _subscribe(self, session: MemoryBus, topic_filter: str) -> None:
        with self._lock:
            if not self._allowed(session.client_id, "read", topic_filter):
                return  # Mosquitto refuses the subscription
            session.granted.append(topic_filter)
            if topic_filter.startswith("$share/"):
                return  # retained messages are not sent to shared subscriptions
            for message in list(self._retained.values()):
                if topic_matches(topic_filter, message.topic) and self._allowed(
                    session.client_id, "read", message.topic
                ):
                    session._deliver(message, retain=True)

    def publish(self, sender: str, message: _Message, retain: bool, checked: bool = True) -> None:
        """Deliver ``message``; ``checked=False`` for a will, whose topic was allowed at connect."""
        with self._lock:
            if checked and not self._allowed(sender, "write", message.topic):
                return
            if retain:
                if message.payload:
                    self._retained[message.topic] = message
                else:
                    self._retained.pop(message.topic, None)
            groups: dict[str, list[MemoryBus]] = {}
            for session in list(self._sessions.values()):
                delivered = False
                for topic_filter in session.granted:
                    if topic_filter.startswith("$share/"):
                        _, group, inner = topic_filter.split("/", 2)
                        if topic_matches(inner, message.topic):
                            groups.setdefault(f"{group}/{inner}", []).append(session)
                    elif not delivered and topic_matches(topic_filter, message.topic):
                        if self._allowed(session.client_id, "read", message.topic):
                            session._deliver(message, retain=False)
                        delivered = True  # one copy per session, however many filters match
            for key, members in groups.items():
                allowed = sorted(
                    (s for s in members if self._allowed(s.client_id, "read", message.topic)), key=lambda s: s.client_id
                )
                if allowed:
                    turn = next(self._turns.setdefault(key, itertools.count()))
                    allowed[turn % len(allowed)]._deliver(message, retain=False)


class MemoryBus:
    """One client session on a :class:`MemoryBroker` (a :class:`~edgeci_mqtt.bus.protocol.Bus`)."""

    def __init__(self, broker: MemoryBroker, client_id: str) -> None:
        self.broker, self.client_id = broker, client_id
        self.events: queue.Queue[Event] = queue.Queue()
        self.filters: list[str] = []  # asked for, kept over reconnections
        self.granted: list[str] = []  # what the broker accepted in this session
        self.connected = False
        self._will: _Message | None = None

    def will(self, topic: str, payload: bytes) -> None:
        self._will = _Message(topic, payload, None, None)

    def start(self, timeout: float = 10.0) -> None:
        if self._will is not None and not self.broker._allowed(self.client_id, "write", self._will.topic):
            self._will = None  # Mosquitto checks the will's topic when the client connects
        self.broker._connect(self)
        self.connected = True
        self.granted = []
        self.events.put(Connected())
        for topic_filter in self.filters:
            self.broker._subscribe(self, topic_filter)

    def stop(self) -> None:
        self._end("clean disconnect", abnormal=False)

    def crash(self) -> None:
        """End the session as a lost connection would: the broker publishes the will."""
        self._end("connection lost", abnormal=True)

    def _end(self, reason: str, abnormal: bool) -> None:
        with self.broker._lock:  # ends once, even when a takeover and a crash race
            if not self.connected:
                return
            self.connected = False
            self.broker._disconnect(self)
        self.events.put(Disconnected(reason))
        if abnormal and self._will is not None:
            self.broker.publish(self.client_id, self._will, retain=True, checked=False)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        if topic not in self.filters:
            self.filters.append(topic)
        if self.connected:
            self.broker._subscribe(self, topic)

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
        for part in checked_frames(topic, payload, retain):
            self.publish_frame(topic, part, retain, response_topic, correlation)

    def publish_frame(
        self,
        topic: str,
        frame: bytes,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        """One raw publish, as a hostile client would send it (no chunking, no checks).
        Dropped once the session has ended (paho would keep it for a reconnection)."""
        if not self.connected:
            return
        if len(frame) > self.broker.max_packet_bytes or "+" in topic or "#" in topic:
            self.crash()  # the broker drops a client that sends an oversize or malformed packet
            return
        self.broker.publish(self.client_id, _Message(topic, frame, response_topic, correlation), retain)

    def _deliver(self, message: _Message, retain: bool) -> None:
        if self.connected:
            self.events.put(
                Inbound(message.topic, message.payload, retain, message.response_topic, message.correlation)
            )
