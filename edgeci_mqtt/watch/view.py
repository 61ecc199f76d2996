"""Live view of the traffic: every edgeci message decoded, everything else shown raw.

:class:`TrafficView` is pure (payloads in, lines out), so the same formatting serves
``edgeci watch`` and its tests. Tensors are shown as dtype/shape/bytes, never as numbers;
the view keeps the device table and the programs in flight, so the table says what each
device is doing. The watcher reads no data topic: programs, rows, failures and reports are
shown from the metadata their senders report while it watches (:mod:`edgeci_mqtt.watch.traffic`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeci_mqtt.bus.protocol import Bus, Inbound, events_until
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.watch.traffic import DATA_KINDS, data_topic, describe, reported_by, size_text, summarise, tensor_text
from edgeci_mqtt.wire import (
    DEVICE_STATE,
    RESULTS,
    ROOT,
    AwardMessage,
    BidMessage,
    CallMessage,
    DeviceStateMessage,
    Message,
    OrchestratorStateMessage,
    Reassembler,
    RequestMessage,
    ResponseMessage,
)
from edgeci_mqtt.wire.traffic_records import TrafficMessage, TrafficRecord, WatcherStateMessage

__all__ = ["TrafficView", "device_states"]


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
            return [f"{topic}  (not edgeci) {size_text(len(payload))}: {preview!r}"]
        try:
            message = self.reassembler.feed(topic, payload)
        except WireError as exc:
            return [f"{topic}  INVALID ({size_text(len(payload))}): {exc}"]
        if message is None:
            return []
        if isinstance(message, TrafficMessage):
            return self._batch(topic, message, now)
        if data_topic(topic) is not None:
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
        """One line for a message sent on a data topic, from its record (``at``: when it was
        sent); the programs in flight follow it, so the device table says who is busy."""
        _, ids = data_topic(r.topic) or (None, {})
        device = ids.get("device", "?")
        sender = ids.get("sender", device)  # rows: who sent them; tasks and results: the device
        kind, request = DATA_KINDS.get(r.kind), r.request or "?"
        text = kind.line(r, sender) if kind else f"{r.kind} message ({size_text(r.size)})"
        if r.kind == "program":
            self.in_flight[device] = (request, at)
        elif r.kind == "release":
            self.in_flight.pop(device, None)
        elif r.kind == "failure" and (sent := self.in_flight.pop(sender, None)):
            text += f" after {(at - sent[1]) * 1e3:.1f} ms"
        elif (
            r.kind in ("rows", "vector") and RESULTS.parse(r.topic) and self.in_flight.get(sender, ("",))[0] == request
        ):
            del self.in_flight[sender]  # its output reached the orchestrator: the program no longer keeps it busy
        return f"{r.topic}  {text}"

    def _describe(self, message: Message, size: int) -> str:
        if isinstance(message, DeviceStateMessage):
            before = self.devices.pop(message.device, None) is not None
            if not message.online:
                return f"device {message.device} OFFLINE" + (" (its will or a clean stop)" if before else "")
            self.devices[message.device] = message
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
                f"image {tensor_text(summarise(message.image))}"
            )
        if isinstance(message, ResponseMessage):
            if message.error:
                return f"response {message.request[:8]}: ERROR {message.error}"
            total = message.timings.get("total_s", 0.0) * 1e3
            return (
                f"response {message.request[:8]} from {message.orchestrator} ({message.strategy}): "
                f"{tensor_text(summarise(message.logits))} in {total:.1f} ms on {', '.join(message.devices)}"
            )
        if isinstance(message, OrchestratorStateMessage):
            return f"orchestrator {message.orchestrator} {'ONLINE' if message.online else 'OFFLINE'}"
        if isinstance(message, WatcherStateMessage):
            return f"watcher {message.watcher} {'ONLINE' if message.online else 'OFFLINE'}"
        return f"{message.kind} message ({size_text(size)})"

    def table(self) -> str:
        """The device table: who is online and what it is doing."""
        lines = [f"{len(self.devices)} device(s) online"]
        for name, state in sorted(self.devices.items()):
            doing = f"busy: program {self.in_flight[name][0]}" if name in self.in_flight else "idle"
            speed = f"{state.link.bandwidth_mbit:7.0f} Mbit/s {state.link.latency_ms:6.2f} ms" if state.link else "?"
            lines.append(f"  {name:12s} {speed}  {doing}")
        return "\n".join(lines)


def device_states(
    bus: Bus,
    enough: Callable[[dict[str, DeviceStateMessage]], bool],
    timeout: float,
    check: Callable[[], None] = lambda: None,
) -> dict[str, DeviceStateMessage]:
    """The online devices' retained states, read from ``bus`` until ``enough`` of them are
    there or ``timeout`` passes; ``check`` may raise to give up early (a process died)."""
    bus.subscribe(DEVICE_STATE.filter)
    bus.start()
    view = TrafficView()  # its device table is what the states say
    try:
        for event in events_until(bus, deadline=time.perf_counter() + timeout, poll_s=0.5):
            check()
            if isinstance(event, Inbound):
                view.feed(event.topic, event.payload, time.monotonic())
            if enough(view.devices):
                break
    finally:
        bus.stop()
    return view.devices
