"""The edge of :mod:`edgeci_mqtt.watch.traffic`: notes data messages, publishes the batches.

A device or orchestrator holds one :class:`TrafficPublisher`: it hands it the watcher
states it reads (:meth:`~TrafficPublisher.heard`) and each data message it sends
(:meth:`~TrafficPublisher.note`, or :meth:`~TrafficPublisher.publish` where only the
payload is at hand). With no watcher online that is one comparison under a lock; while one
is, a thread of its own sends each batch when due, so no role's loop has to tick for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from edgeci_mqtt.bus.protocol import Bus, Inbound
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.watch.traffic import BATCH_INTERVAL_S, TrafficReporter, data_topic
from edgeci_mqtt.wire import Message, decode, encode
from edgeci_mqtt.wire.topics import WATCHER_STATE

__all__ = ["TrafficPublisher"]

log = logging.getLogger("edgeci.traffic")

_WATCHERS = WATCHER_STATE.filter.split("+")[0]
"""The prefix of every watcher state topic: any other event is passed over at once."""


class TrafficPublisher:
    """Reports ``sender``'s data messages on ``traffic_topic`` through ``bus`` while watched."""

    def __init__(self, bus: Bus, sender: str, traffic_topic: str, interval_s: float = BATCH_INTERVAL_S) -> None:
        self.bus, self.traffic_topic = bus, traffic_topic
        self.reporter = TrafficReporter(sender, interval_s)
        self._lock = threading.Condition()
        self._closed = False
        self._sender: threading.Thread | None = None

    def heard(self, event: Inbound) -> bool:
        """Take a watcher's state in (True), or leave the event to its role (False)."""
        if not event.topic.startswith(_WATCHERS):
            return False
        with self._lock:
            return self.reporter.heard(event.topic, event.payload, time.monotonic())

    def watching(self, topic: str) -> bool:
        """Whether a message sent on ``topic`` now would be reported."""
        with self._lock:
            return self.reporter.watched(time.monotonic()) and data_topic(topic) is not None

    def note(self, topic: str, message: Message, size: int | None = None) -> None:
        """``message`` was sent on ``topic`` in ``size`` bytes (None: its encoding's, measured
        only if someone watches)."""
        if not self.watching(topic):
            return
        size = len(encode(message)) if size is None else size
        with self._lock:
            self.reporter.note(topic, message, size, time.monotonic())
            if self._sender is None and not self._closed:
                self._sender = threading.Thread(target=self._send, name=f"{self.reporter.sender}-traffic", daemon=True)
                self._sender.start()
            self._lock.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish ``payload`` on ``bus`` and note it (decoded again only if someone watches)."""
        self.bus.publish(topic, payload)
        if self.watching(topic):
            with contextlib.suppress(WireError):  # the whole payload: the bus chunks it, not us
                self.note(topic, decode(payload), len(payload))

    def stop(self) -> None:
        """Send what is pending (if the bus still can) and end the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=2.0)

    def _send(self) -> None:
        """Send each batch when due, until stopped (then what is pending)."""
        while True:
            with self._lock:
                while not self._closed and (wait := self.reporter.wait_s(time.monotonic())) != 0.0:
                    self._lock.wait(wait)
                closed = self._closed
                batch = self.reporter.take(time.monotonic(), force=closed)
            if batch is not None:
                try:
                    self.bus.publish(self.traffic_topic, encode(batch), qos=0)
                except EdgeCIError as exc:
                    log.debug("%s: traffic report not sent: %s", self.reporter.sender, exc)
            if closed:
                return
