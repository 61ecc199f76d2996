"""Live view of the traffic: every edgeci message decoded, everything else shown raw.

:class:`TrafficView` is pure (payloads in, lines out), so the same formatting serves
``edgeci watch`` and its tests. Tensors are shown as dtype/shape/bytes, never as
numbers; the view keeps the device table and the programs in flight, so the device
table says what each device is doing. The watcher reads no data topic: programs, rows,
failures and reports are shown from the
metadata their senders report while it watches (:mod:`edgeci_mqtt.watch.traffic`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from edgeci_mqtt.bus.protocol import Bus, Inbound, events_until
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.watch.traffic import REPORTED, TrafficReporter, describe, reported_by, summarise
from edgeci_mqtt.wire import (
    DEVICE_STATE,
    RESULTS,
    ROOT,
    AwardMessage,
    BidMessage,
    CallMessage,
    ChunkMessage,
    DeviceStateMessage,
    Message,
    OrchestratorStateMessage,
    Reassembler,
    RequestMessage,
    ResponseMessage,
    decode,
)
from edgeci_mqtt.wire.traffic_records import TensorSummary, TrafficMessage, TrafficRecord, WatcherStateMessage

__all__ = ["TrafficView", "describe_tensor", "device_states"]


def describe_tensor(value: NDArray[np.generic] | None) -> str:
    return _tensor(summarise(value))


def device_states(
    bus: Bus,
    enough: Callable[[dict[str, DeviceStateMessage]], bool],
    timeout: float,
    check: Callable[[], None] | None = None,
) -> dict[str, DeviceStateMessage]:
    """The online devices' retained states, read from ``bus`` until ``enough`` of them are
    there or ``timeout`` passes; ``check`` may raise to give up early (a process died)."""
    bus.subscribe(DEVICE_STATE.filter)
    bus.start()
    online: dict[str, DeviceStateMessage] = {}
    try:
        for event in events_until(bus, deadline=time.perf_counter() + timeout, poll_s=0.5):
            if check is not None:
                check()
            if isinstance(event, Inbound):
                try:
                    state = decode(event.payload, DeviceStateMessage)
                except WireError:
                    continue
                assert isinstance(state, DeviceStateMessage)
                if state.online:
                    online[state.device] = state
                else:
                    online.pop(state.device, None)
            if enough(online):
                break
    finally:
        bus.stop()
    return online


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def _tensor(summary: TensorSummary | None) -> str:
    return "none" if summary is None else f"{summary.dtype}{list(summary.shape)} {summary.nbytes} B"


def _ms(seconds: float | None) -> float:
    return 0.0 if seconds is None else seconds * 1e3


@dataclass
class TrafficView:
    """Lines for what a watcher receives. The data topics (tasks, rows, results) reach it
    only as their senders' :class:`TrafficMessage` batches; a data message fed directly (a
    broker without the roles) is described the same way (:func:`describe`), so both read alike."""

    devices: dict[str, DeviceStateMessage] = field(default_factory=dict)
    in_flight: dict[str, tuple[str, float]] = field(default_factory=dict)  # device -> (program, sent at)
    reassembler: Reassembler = field(default_factory=Reassembler)

    def feed(self, topic: str, payload: bytes, now: float) -> list[str]:
        """The lines for one message (none while a chunked payload is incomplete; one per
        record of a traffic batch)."""
        if not topic.startswith(ROOT + "/"):
            preview = payload[:60].decode("utf-8", errors="replace")
            return [f"{topic}  (not edgeci) {_size(len(payload))}: {preview!r}"]
        try:
            message = self.reassembler.feed(topic, payload)
        except WireError as exc:
            return [f"{topic}  INVALID ({_size(len(payload))}): {exc}"]
        if message is None:
            return []
        if isinstance(message, TrafficMessage):
            return self._batch(topic, message, now)
        if TrafficReporter.reports(topic):
            return [self._record(describe(topic, message, len(payload)), now)]
        return [f"{topic}  {self._describe(message, len(payload))}"]

    def _batch(self, topic: str, batch: TrafficMessage, now: float) -> list[str]:
        lines = []
        for record in batch.records:
            if reported_by(topic, batch, record):
                lines.append(self._record(record, now - record.before_s))
            else:
                lines.append(f"{topic}  INVALID: {batch.sender} cannot have sent a {record.kind} on {record.topic}")
        if batch.dropped:
            lines.append(f"{topic}  {batch.dropped} more message(s) of {batch.sender} not reported (batch full)")
        return lines

    def _record(self, r: TrafficRecord, at: float) -> str:
        """One line for a message sent on a data topic, from its record (``at``: when it was sent)."""
        ids = next((ids for p in REPORTED if (ids := p.parse(r.topic)) is not None), {})
        sender = ids.get("sender") or ids.get("device", "?")  # rows: who sent them; results: the device
        request, size = (r.request or "?"), _size(r.size)
        if r.kind == "failure":
            sent = self.in_flight.pop(sender, None)
            after = f" after {(at - sent[1]) * 1e3:.1f} ms" if sent else ""
            what = f"item {r.steps}" if r.steps is not None else "its program"
            text = f"failure {request[:12]} from {sender}: {what}: {r.error}{after}"
        elif r.kind == "program":
            self.in_flight[ids.get("device", "")] = (request, at)
            carried = f", rows {r.region} of boundary {r.boundary} {_tensor(r.tensor)}" if r.tensor is not None else ""
            extra = (" + tail" if r.tail else "") + (" + finish" if r.finish else "")
            text = f"program {request[:12]} for {ids.get('device')}: {r.steps} steps{extra}{carried} ({size})"
        elif r.kind == "rows":
            self._answered(r, sender, request)
            text = (
                f"rows {request[:12]} from {sender}: boundary {r.boundary} {r.region} "
                f"{_tensor(r.tensor)} as {r.codec} ({size})"
            )
        elif r.kind == "vector":
            self._answered(r, sender, request)
            what = "logits" if r.logits else f"features {r.features.start}-{r.features.stop}" if r.features else "?"
            text = f"{what} {request[:12]} from {sender}: {_tensor(r.tensor)} as {r.codec} ({size})"
        elif r.kind == "release":
            self.in_flight.pop(ids.get("device", ""), None)
            text = f"release {request[:12]} by {r.orchestrator}: {r.reason}"
        elif r.kind == "go":
            text = f"go {request[:12]} by {r.orchestrator}: boundary {r.boundary}"
        elif r.kind == "done":
            text = f"done {request[:12]} from {sender}: boundary {r.boundary}"
        elif r.kind == "report":
            text = (
                f"report {request[:12]} from {sender}: item {r.steps} {r.region or ''} "
                f"compute {_ms(r.compute_s):.1f} ms, send {_ms(r.encode_s):.1f} ms"
            )
        elif r.kind == "weights":
            text = (
                f"weights {r.model} stage {r.stage} for {ids.get('device')}: {r.steps} tensors "
                f"{_tensor(r.tensor).split(' ', 1)[-1]} ({size})"
            )
        else:
            text = f"{r.kind} message ({size})"
        return f"{r.topic}  {text}"

    def _answered(self, r: TrafficRecord, sender: str, request: str) -> None:
        """A device's output reached its orchestrator: its program there is done (or at least
        has stopped keeping it busy)."""
        if RESULTS.parse(r.topic) is not None and self.in_flight.get(sender, ("",))[0] == request:
            del self.in_flight[sender]

    def _describe(self, message: Message, size: int) -> str:
        if isinstance(message, DeviceStateMessage):
            before = message.device in self.devices
            if message.online:
                self.devices[message.device] = message
            else:
                self.devices.pop(message.device, None)
            if not message.online:
                return f"device {message.device} OFFLINE" + (" (its will or a clean stop)" if before else "")
            link = f"{message.link.bandwidth_mbit:.0f} Mbit/s {message.link.latency_ms:.2f} ms" if message.link else "?"
            return f"device {message.device} ONLINE v{message.version}: link {link}, models {', '.join(message.models)}"
        if isinstance(message, CallMessage):
            blocks = ", ".join(f"{lot.block.start}-{lot.block.stop} ({len(lot.items)} items)" for lot in message.lots)
            return (
                f"auction {message.round} CALL by {message.orchestrator}: {message.model} blocks {blocks}, "
                f"window {message.window_s * 1e3:.0f} ms"
            )
        if isinstance(message, BidMessage):
            best = [min(p.alone_s) * 1e3 for p in message.lots if p.alone_s]
            return (
                f"auction {message.round} BID from {message.device}: queue {message.queue_s * 1e3:.1f} ms, "
                f"best item by lot {', '.join(f'{b:.1f}' for b in best)} ms"
            )
        if isinstance(message, AwardMessage):
            runs = ", ".join(f"{r.device}: items {r.items.start}-{r.items.stop}" for r in message.runs)
            return f"auction {message.round} AWARD of lot {message.lot}: {runs}"
        if isinstance(message, RequestMessage):
            return (
                f"request {message.request[:8]}: {message.model} {message.strategy or '(default strategy)'} "
                f"image {describe_tensor(message.image)}"
            )
        if isinstance(message, ResponseMessage):
            if message.error:
                return f"response {message.request[:8]}: ERROR {message.error}"
            total = message.timings.get("total_s", 0.0) * 1e3
            return (
                f"response {message.request[:8]} from {message.orchestrator} ({message.strategy}): "
                f"{describe_tensor(message.logits)} in {total:.1f} ms on {', '.join(message.devices)}"
            )
        if isinstance(message, ChunkMessage):
            return f"chunk {message.index + 1}/{message.count} of {message.id}"
        if isinstance(message, OrchestratorStateMessage):
            return f"orchestrator {message.orchestrator} {'ONLINE' if message.online else 'OFFLINE'}"
        if isinstance(message, WatcherStateMessage):
            return f"watcher {message.watcher} {'ONLINE' if message.online else 'OFFLINE'}"
        return f"{message.kind} message ({_size(size)})"

    def table(self) -> str:
        """The device table: who is online and what it is doing."""
        lines = [f"{len(self.devices)} device(s) online"]
        for name, state in sorted(self.devices.items()):
            link = state.link
            doing = f"busy: program {self.in_flight[name][0]}" if name in self.in_flight else "idle"
            speed = f"{link.bandwidth_mbit:7.0f} Mbit/s {link.latency_ms:6.2f} ms" if link else "?"
            lines.append(f"  {name:12s} {speed}  {doing}")
        return "\n".join(lines)
