"""What the watcher may see of the data topics: metadata records, reported only while watched.

The watcher role reads no topic that carries client data (:attr:`TopicPattern.data`:
tasks, rows, results, requests, answers). So that ``edgeci watch`` still shows every
program, rows message, report and failure of a request, their senders describe each such
message in a :class:`~edgeci_mqtt.wire.TrafficRecord` (its topic, kind, size on the wire,
blocks, regions, tensors as dtype/shape/bytes, codec, timings, errors; never a number of
the data) and publish the records in batches on their own ``traffic`` topic, which only
they may write and watchers read.

Only while a watcher is online: ``edgeci watch`` keeps a retained
:class:`~edgeci_mqtt.wire.WatcherState` on ``watchers/<id>/state`` (its will says offline),
devices and orchestrators read those states, and with none online noting a message is one
comparison. This module is pure (no clock, no bus, no threads): :func:`describe` builds a
record, :class:`TrafficReporter` knows who watches and hands back a batch when one is due;
:mod:`edgeci_mqtt.watch.publisher` is its edge.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from numpy.typing import NDArray

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.wire import (
    MAX_SECONDS,
    DoneMessage,
    FailureMessage,
    GoMessage,
    Message,
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
)
from edgeci_mqtt.wire.topics import DEVICE_TRAFFIC, ORCHESTRATOR_TRAFFIC, TOPICS, WATCHER_STATE, Role, TopicPattern
from edgeci_mqtt.wire.traffic_records import MAX_TRAFFIC_RECORDS

__all__ = [
    "BATCH_INTERVAL_S",
    "REPORTED",
    "WATCHER_TTL_S",
    "TrafficReporter",
    "describe",
    "reported_by",
    "summarise",
]

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


def summarise(array: NDArray[Any] | None) -> TensorSummary | None:
    """A tensor as the watcher may see it: dtype, shape and bytes, not one of its numbers."""
    if array is None:
        return None
    return TensorSummary(str(array.dtype), tuple(int(n) for n in array.shape), int(array.nbytes))


def _seconds(value: float) -> float:
    return min(max(value, 0.0), MAX_SECONDS)


def describe(topic: str, message: Message, size: int, before_s: float = 0.0) -> TrafficRecord:
    """The record of ``message`` (``size`` bytes on the wire) sent on ``topic``."""
    base: dict[str, Any] = {"topic": topic, "kind": message.kind, "size": size, "before_s": _seconds(before_s)}
    if isinstance(message, ProgramMessage):
        return TrafficRecord(
            **base,
            request=message.request,
            orchestrator=message.orchestrator,
            model=message.model,
            steps=len(message.steps),
            tail=message.tail is not None,
            finish=message.finish is not None,
            boundary=message.input_boundary if message.input is not None else None,
            region=message.input_region,
            tensor=summarise(message.input),
        )
    if isinstance(message, RowsMessage):
        return TrafficRecord(
            **base,
            request=message.request,
            boundary=message.boundary,
            region=message.region,
            tensor=summarise(message.rows.array),
            codec=message.rows.codec,
        )
    if isinstance(message, VectorMessage):
        return TrafficRecord(
            **base,
            request=message.request,
            features=message.features,
            logits=message.logits,
            tensor=summarise(message.values.array),
            codec=message.values.codec,
        )
    if isinstance(message, FailureMessage):
        item = message.item if message.item >= 0 else None  # -1: the program was refused
        return TrafficRecord(**base, request=message.request, steps=item, error=message.error)
    if isinstance(message, ReportMessage):
        return TrafficRecord(
            **base,
            request=message.request,
            block=message.block,
            region=message.region,
            steps=message.item,
            compute_s=_seconds(message.computed_at - message.started_at),
            encode_s=_seconds(message.sent_at - message.computed_at),
        )
    if isinstance(message, DoneMessage):
        return TrafficRecord(**base, request=message.request, boundary=message.boundary)
    if isinstance(message, GoMessage):
        return TrafficRecord(
            **base, request=message.request, orchestrator=message.orchestrator, boundary=message.boundary
        )
    if isinstance(message, ReleaseMessage):
        return TrafficRecord(**base, request=message.request, orchestrator=message.orchestrator, reason=message.reason)
    if isinstance(message, WeightsMessage):
        return TrafficRecord(
            **base,
            model=message.model,
            stage=message.stage,
            steps=len(message.tensors),
            tensor=TensorSummary("mixed", (), sum(int(a.nbytes) for a in message.tensors.values())),
        )
    return TrafficRecord(**base)


def reported_by(traffic_topic: str, batch: TrafficMessage, record: TrafficRecord) -> bool:
    """Whether ``record``, in ``batch`` on ``traffic_topic``, is about a message its sender
    may have sent: the batch's sender owns the traffic topic, and the record's topic is a
    data topic that sender's role may write (under its own name where the grant says so).
    A device cannot pass off rows in another device's name, nor an orchestrator's tasks."""
    for role, pattern in _TRAFFIC.items():
        ids = pattern.parse(traffic_topic)
        if ids is None:
            continue
        if next(iter(ids.values())) != batch.sender:
            return False
        for data in REPORTED:
            named = data.parse(record.topic)
            if named is not None and any(
                g.role == role
                and g.access in ("write", "readwrite")
                and (not g.own or named.get(g.own) == batch.sender)
                for g in data.grants
            ):
                return True
        return False
    return False


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
        if not isinstance(state, WatcherStateMessage) or state.watcher != ids["watcher"]:
            return True
        if state.online:
            self._watchers[state.watcher] = now
        else:
            self._watchers.pop(state.watcher, None)
        return True

    def watched(self, now: float) -> bool:
        """Some watcher is online (and said so within :data:`WATCHER_TTL_S`)."""
        if not self._watchers:
            return False
        for watcher, since in list(self._watchers.items()):
            if now - since > WATCHER_TTL_S:
                del self._watchers[watcher]
        if not self._watchers:
            self._records.clear()
            self._dropped = 0
        return bool(self._watchers)

    @staticmethod
    def reports(topic: str) -> bool:
        """Whether a message on ``topic`` is reported (one of :data:`REPORTED`)."""
        return any(pattern.parse(topic) is not None for pattern in REPORTED)

    def note(self, topic: str, message: Message, size: int, now: float) -> None:
        """Record ``message``, sent on ``topic`` in ``size`` bytes, if anyone watches."""
        if not self.watched(now) or not self.reports(topic):
            return
        if len(self._records) >= self.max_records:
            self._dropped += 1
            return
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
        self._records.clear()
        self._dropped = 0
        return batch
