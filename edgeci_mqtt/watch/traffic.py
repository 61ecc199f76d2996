"""What the watcher may see of the data topics: metadata records, reported only while watched.

The watcher role reads no topic that carries client data (:attr:`TopicPattern.data`). So
that ``edgeci watch`` still shows every program, rows message, report and failure, their
senders describe each such message in a :class:`~edgeci_mqtt.wire.TrafficRecord` (never a
number of the data) and publish the records in batches on their own ``traffic`` topic, only
while some watcher's retained :class:`~edgeci_mqtt.wire.WatcherStateMessage` says it is
online (unwatched, noting a message is one comparison). :data:`DATA_KINDS` says once per
kind what its record holds and how its watch line reads. :class:`TrafficReporter` is pure
(no clock, no bus, no threads); :class:`TrafficPublisher` is its edge, which a device or
orchestrator holds: it hands it the watcher states it reads and each data message it
sends; while a watcher is online, a thread of its own sends each batch when due, so no
role's loop has to tick for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from numpy.typing import NDArray

from edgeci_mqtt.bus.protocol import Bus, Inbound
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.wire import (
    MAX_SECONDS,
    DoneMessage,
    FailureMessage,
    GoMessage,
    Message,
    PackedArray,
    ProgramMessage,
    ReleaseMessage,
    ReportMessage,
    RowsMessage,
    TensorSummary,
    TrafficMessage,
    TrafficRecord,
    VectorMessage,
    WatcherStateMessage,
    WeightsMessage,
    decode,
    encode,
)
from edgeci_mqtt.wire.topics import DEVICE_TRAFFIC, ORCHESTRATOR_TRAFFIC, TOPICS, WATCHER_STATE, Role, TopicPattern
from edgeci_mqtt.wire.traffic_records import MAX_TRAFFIC_RECORDS

__all__ = ["BATCH_INTERVAL_S", "DATA_KINDS", "REPORTED", "WATCHER_TTL_S", "DataKind", "TrafficReporter", "describe"]
__all__ += ["TrafficPublisher", "data_topic", "reported_by", "size_text", "summarise", "tensor_text"]

log = logging.getLogger("edgeci.traffic")

BATCH_INTERVAL_S = 0.2
"""A batch goes out this long after its first record: one traffic message per 200 ms of
activity, however many messages a request sends."""
WATCHER_TTL_S = 60.0
"""A watcher counts as online this long after its last online state (``edgeci watch``
announces itself again every 20 s): a retained "online" whose will never came (a watcher
whose user was deleted) costs at most this much reporting."""
REPORTED: tuple[TopicPattern, ...] = tuple(
    t for t in TOPICS if t.data and not any(g.role == "client" for g in t.grants)
)
"""The data topics between devices and orchestrators (tasks, rows, results): what is sent
there is reported. The clients' own topics are not: the watcher sees nothing of them."""
_TRAFFIC: dict[Role, TopicPattern] = {"device": DEVICE_TRAFFIC, "orchestrator": ORCHESTRATOR_TRAFFIC}
_WATCHERS = WATCHER_STATE.filter.split("+")[0]
"""The prefix of every watcher state topic: any other event is passed over at once."""


def data_topic(topic: str) -> tuple[TopicPattern, dict[str, str]] | None:
    """Which of :data:`REPORTED` ``topic`` is, with its ids (None: none of them)."""
    return next(((p, ids) for p in REPORTED if (ids := p.parse(topic)) is not None), None)


def summarise(array: NDArray[Any] | None) -> TensorSummary | None:
    """A tensor as the watcher may see it: dtype, shape and bytes, not one of its numbers."""
    return None if array is None else TensorSummary(str(array.dtype), tuple(map(int, array.shape)), int(array.nbytes))


def size_text(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def tensor_text(summary: TensorSummary | None) -> str:
    return "none" if summary is None else f"{summary.dtype}{list(summary.shape)} {summary.nbytes} B"


def _seconds(value: float) -> float:
    return min(max(value, 0.0), MAX_SECONDS)


def _request(r: TrafficRecord) -> str:
    return (r.request or "?")[:12]


def _packed(array: PackedArray) -> dict[str, Any]:
    return {"tensor": summarise(array.array), "codec": array.codec}


def _packed_text(r: TrafficRecord) -> str:
    return f"{tensor_text(r.tensor)} as {r.codec} ({size_text(r.size)})"


M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class DataKind(Generic[M]):
    """One kind of message sent on a data topic, both ways: its record holds the message's
    fields named in ``same`` and those ``more`` derives (a tensor only as its summary), and
    ``line`` is its ``edgeci watch`` text from that record and who its topic names (the
    device of a task or a result, the sender of rows)."""

    message: type[M]
    same: tuple[str, ...]
    line: Callable[[TrafficRecord, str], str]
    more: Callable[[M], dict[str, Any]] = lambda message: {}


DATA_KINDS: dict[str, DataKind[Any]] = {
    k.message.kind: k
    for k in (
        DataKind(
            ProgramMessage,
            ("request", "orchestrator", "model"),
            lambda r, who: (
                f"program {_request(r)} for {who}: {r.steps} steps"
                + (" + tail" if r.tail else "")
                + (" + finish" if r.finish else "")
                + (f", rows {r.region} of boundary {r.boundary} {tensor_text(r.tensor)}" if r.tensor else "")
                + f" ({size_text(r.size)})"
            ),
            lambda m: {
                "steps": len(m.steps),
                "tail": m.tail is not None,
                "finish": m.finish is not None,
                "boundary": m.input_boundary if m.input is not None else None,
                "region": m.input_region,
                "tensor": summarise(m.input),
            },
        ),
        DataKind(
            RowsMessage,
            ("request", "boundary", "region"),
            lambda r, who: f"rows {_request(r)} from {who}: boundary {r.boundary} {r.region} {_packed_text(r)}",
            lambda m: _packed(m.rows),
        ),
        DataKind(
            VectorMessage,
            ("request", "features", "logits"),
            lambda r, who: (
                ("logits" if r.logits else f"features {r.features.start}-{r.features.stop}" if r.features else "?")
                + f" {_request(r)} from {who}: {_packed_text(r)}"
            ),
            lambda m: _packed(m.values),
        ),
        DataKind(
            FailureMessage,
            ("request", "error"),
            lambda r, who: (
                f"failure {_request(r)} from {who}: "
                + ("its program" if r.steps is None else f"item {r.steps}")
                + f": {r.error}"
            ),
            lambda m: {"steps": m.item if m.item >= 0 else None},  # -1: the program was refused
        ),
        DataKind(
            ReportMessage,
            ("request", "block", "region"),
            lambda r, who: (
                f"report {_request(r)} from {who}: item {r.steps} {r.region or ''} "
                f"compute {(r.compute_s or 0.0) * 1e3:.1f} ms, send {(r.encode_s or 0.0) * 1e3:.1f} ms"
            ),
            lambda m: {
                "steps": m.item,
                "compute_s": _seconds(m.computed_at - m.started_at),
                "encode_s": _seconds(m.sent_at - m.computed_at),
            },
        ),
        DataKind(
            DoneMessage, ("request", "boundary"), lambda r, who: f"done {_request(r)} from {who}: boundary {r.boundary}"
        ),
        DataKind(
            GoMessage,
            ("request", "orchestrator", "boundary"),
            lambda r, who: f"go {_request(r)} by {r.orchestrator}: boundary {r.boundary}",
        ),
        DataKind(
            ReleaseMessage,
            ("request", "orchestrator", "reason"),
            lambda r, who: f"release {_request(r)} by {r.orchestrator}: {r.reason}",
        ),
        DataKind(
            WeightsMessage,
            ("model", "stage"),
            lambda r, who: (
                f"weights {r.model} stage {r.stage} for {who}: {r.steps} tensors "
                f"{tensor_text(r.tensor).split(' ', 1)[-1]} ({size_text(r.size)})"
            ),
            lambda m: {
                "steps": len(m.tensors),
                "tensor": TensorSummary("mixed", (), sum(int(a.nbytes) for a in m.tensors.values())),
            },
        ),
    )
}
"""Every message of a data topic the roles report, by kind (any other is recorded and shown
by its topic, kind and size only)."""


def describe(topic: str, message: Message, size: int) -> TrafficRecord:
    """The record of ``message`` (``size`` bytes on the wire) sent on ``topic``."""
    kind = DATA_KINDS.get(message.kind)
    if kind is None or not isinstance(message, kind.message):
        return TrafficRecord(topic, message.kind, size)
    fields = {name: getattr(message, name) for name in kind.same} | kind.more(message)
    return TrafficRecord(topic, message.kind, size, **fields)


def reported_by(traffic_topic: str, batch: TrafficMessage, record: TrafficRecord) -> bool:
    """Whether ``record``, in ``batch`` on ``traffic_topic``, is about a message its sender
    may have sent: the batch's sender owns the traffic topic, and the record's topic is a
    data topic that sender's role may write (under its own name where the grant says so).
    A device cannot pass off rows in another device's name, nor an orchestrator's tasks."""
    owner = next((role for role, p in _TRAFFIC.items() if p.parse(traffic_topic) == {p.ids[0]: batch.sender}), None)
    data = data_topic(record.topic)
    if owner is None or data is None:
        return False
    pattern, named = data
    return any(
        g.role == owner and g.access in ("write", "readwrite") and (not g.own or named.get(g.own) == batch.sender)
        for g in pattern.grants
    )


class TrafficReporter:
    """Who watches, and the records noted since the last batch (not thread-safe: its edge
    holds a lock). ``now`` is any monotonic clock in seconds."""

    def __init__(
        self, sender: str, interval_s: float = BATCH_INTERVAL_S, max_records: int = MAX_TRAFFIC_RECORDS
    ) -> None:
        self.sender, self.interval_s, self.max_records = sender, interval_s, max_records
        self._watchers: dict[str, float] = {}  # watcher -> when its online state came
        self._records: list[tuple[float, TrafficRecord]] = []
        self._dropped = 0

    def heard(self, topic: str, payload: bytes, now: float) -> bool:
        """Feed a message: True if it was a watcher's state (taken in, or invalid and
        ignored), False if it is for someone else."""
        ids = WATCHER_STATE.parse(topic)
        if ids is None:
            return False
        try:
            state = decode(payload, WatcherStateMessage)
        except WireError:
            return True
        if isinstance(state, WatcherStateMessage) and state.watcher == ids["watcher"]:
            self._watchers.pop(state.watcher, None)
            if state.online:
                self._watchers[state.watcher] = now
        return True

    def watched(self, now: float) -> bool:
        """Some watcher is online (and said so within :data:`WATCHER_TTL_S`)."""
        if not self._watchers:
            return False
        self._watchers = {w: since for w, since in self._watchers.items() if now - since <= WATCHER_TTL_S}
        if not self._watchers:
            self._records, self._dropped = [], 0
        return bool(self._watchers)

    def note(self, topic: str, message: Message, size: int, now: float) -> None:
        """Record ``message``, sent on ``topic`` in ``size`` bytes, if anyone watches."""
        if not self.watched(now) or data_topic(topic) is None:
            return
        if len(self._records) >= self.max_records:
            self._dropped += 1
        else:
            self._records.append((now, describe(topic, message, size)))

    def pending(self) -> bool:
        return bool(self._records or self._dropped)

    def wait_s(self, now: float) -> float | None:
        """Seconds until a batch is due (0: now; None: nothing to send)."""
        if not self._records:
            return 0.0 if self._dropped else None
        if len(self._records) >= self.max_records:
            return 0.0
        return max(0.0, self._records[0][0] + self.interval_s - now)

    def take(self, now: float, force: bool = False) -> TrafficMessage | None:
        """The batch, if one is due or ``force`` (its records say how long before ``now``
        each was sent)."""
        wait = self.wait_s(now)
        if wait is None or (wait > 0 and not force):
            return None
        records = tuple(replace(record, before_s=_seconds(now - at)) for at, record in self._records)
        batch = TrafficMessage(self.sender, records, self._dropped)
        self._records, self._dropped = [], 0
        return batch


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

    def publish(self, topic: str, message: Message, failed: str = "", **options: Any) -> None:
        """Publish ``message`` through ``bus`` (``options``: as its ``publish`` takes them) and
        note it while watched. If that fails: raised, or with ``failed`` (what could not be
        done) logged, so that a role's loop or worker is not lost to the bus."""
        try:
            self.bus.publish(topic, payload := encode(message), **options)
        except Exception as exc:
            if not failed:
                raise
            log.warning("%s: cannot %s: %s", self.reporter.sender, failed, exc)
            return
        if not self.watching(topic):
            return
        with self._lock:
            self.reporter.note(topic, message, len(payload), time.monotonic())
            if self._sender is None and not self._closed:
                self._sender = threading.Thread(target=self._send, name=f"{self.reporter.sender}-traffic", daemon=True)
                self._sender.start()
            self._lock.notify_all()

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
