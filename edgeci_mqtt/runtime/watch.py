"""Live view of the traffic: every edgeci message decoded, everything else shown raw.

:class:`TrafficView` is pure (payloads in, lines out), so the same formatting serves
``edgeci watch`` and its tests. Tensors are shown as dtype/shape/bytes, never as
numbers; the view keeps the device table and the tasks in flight, so a result line
says how long its task took and the device table says what each device is doing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.runtime.bus import Bus, Inbound, events_until
from edgeci_mqtt.wire import (
    DEVICE_STATE,
    ROOT,
    AuctionCall,
    Award,
    BidMessage,
    Chunk,
    DeviceState,
    InferRequest,
    InferResponse,
    Message,
    OrchestratorState,
    ProgramMessage,
    Reassembler,
    ReleaseMessage,
    ResultMessage,
    RowsMessage,
    TaskMessage,
    VectorMessage,
    decode,
)

__all__ = ["TrafficView", "describe_tensor", "device_states"]


def describe_tensor(value: NDArray[np.generic] | None) -> str:
    return "none" if value is None else f"{value.dtype}{list(value.shape)} {value.nbytes} B"


def device_states(
    bus: Bus,
    enough: Callable[[dict[str, DeviceState]], bool],
    timeout: float,
    check: Callable[[], None] | None = None,
) -> dict[str, DeviceState]:
    """The online devices' retained states, read from ``bus`` until ``enough`` of them are
    there or ``timeout`` passes; ``check`` may raise to give up early (a process died)."""
    bus.subscribe(DEVICE_STATE.filter)
    bus.start()
    online: dict[str, DeviceState] = {}
    try:
        for event in events_until(bus, deadline=time.perf_counter() + timeout, poll_s=0.5):
            if check is not None:
                check()
            if isinstance(event, Inbound):
                try:
                    state = decode(event.payload, DeviceState)
                except WireError:
                    continue
                assert isinstance(state, DeviceState)
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


@dataclass
class TrafficView:
    devices: dict[str, DeviceState] = field(default_factory=dict)
    in_flight: dict[str, tuple[str, float]] = field(default_factory=dict)  # task -> (device, sent at)
    reassembler: Reassembler = field(default_factory=Reassembler)

    def feed(self, topic: str, payload: bytes, now: float) -> str | None:
        """One line for one message (None while a chunked payload is incomplete)."""
        if not topic.startswith(ROOT + "/"):
            preview = payload[:60].decode("utf-8", errors="replace")
            return f"{topic}  (not edgeci) {_size(len(payload))}: {preview!r}"
        try:
            message = self.reassembler.feed(topic, payload)
        except WireError as exc:
            return f"{topic}  INVALID ({_size(len(payload))}): {exc}"
        if message is None:
            return None
        return f"{topic}  {self._describe(topic, message, len(payload), now)}"

    def _describe(self, topic: str, message: Message, size: int, now: float) -> str:
        if isinstance(message, DeviceState):
            before = message.device in self.devices
            if message.online:
                self.devices[message.device] = message
            else:
                self.devices.pop(message.device, None)
            if not message.online:
                return f"device {message.device} OFFLINE" + (" (its will or a clean stop)" if before else "")
            link = f"{message.link.bandwidth_mbit:.0f} Mbit/s {message.link.latency_ms:.2f} ms" if message.link else "?"
            return f"device {message.device} ONLINE v{message.version}: link {link}, models {', '.join(message.models)}"
        if isinstance(message, AuctionCall):
            blocks = ", ".join(f"{lot.block.start}-{lot.block.stop} ({len(lot.items)} items)" for lot in message.lots)
            return (
                f"auction {message.round} CALL by {message.orchestrator}: {message.model} blocks {blocks}, "
                f"deadline {message.deadline_ms:.0f} ms"
            )
        if isinstance(message, BidMessage):
            best = [min(p.alone_s) * 1e3 for p in message.lots if p.alone_s]
            return (
                f"auction {message.round} BID from {message.device}: queue {message.queue_s * 1e3:.1f} ms, "
                f"best item by lot {', '.join(f'{b:.1f}' for b in best)} ms"
            )
        if isinstance(message, Award):
            runs = ", ".join(f"{r.device}: items {r.items.start}-{r.items.stop}" for r in message.runs)
            return f"auction {message.round} AWARD of lot {message.lot}: {runs}"
        if isinstance(message, TaskMessage):
            self.in_flight[message.task] = (topic.split("/")[3], now)
            return (
                f"task {message.task} of {message.request[:8]}: {message.model} block "
                f"{message.block.start}-{message.block.stop} out {message.out_region} in "
                f"{describe_tensor(message.input)} ({_size(size)})"
            )
        if isinstance(message, ResultMessage):
            sent = self.in_flight.pop(message.task, None)
            after = f" after {(now - sent[1]) * 1e3:.1f} ms" if sent else ""
            if message.error:
                return f"result {message.task} from {message.device}: ERROR {message.error}{after}"
            compute = message.timings.compute_s * 1e3 if message.timings else 0.0
            return (
                f"result {message.task} from {message.device}: {describe_tensor(message.output)} "
                f"({_size(size)}), compute {compute:.1f} ms{after}"
            )
        if isinstance(message, ProgramMessage):
            tail = " + tail" if message.tail else ""
            finish = " + finish" if message.finish else ""
            return (
                f"program {message.request[:12]} for {topic.split('/')[3]}: {len(message.steps)} steps{tail}{finish}"
                f"{', image ' + describe_tensor(message.image) if message.image is not None else ''} ({_size(size)})"
            )
        if isinstance(message, RowsMessage):
            return (
                f"rows {message.request[:12]} from {message.sender}: boundary {message.boundary} {message.region} "
                f"{describe_tensor(message.rows.array)} as {message.rows.codec} ({_size(size)})"
            )
        if isinstance(message, VectorMessage):
            what = "logits" if message.logits else f"features {message.features.start}-{message.features.stop}"
            return f"{what} {message.request[:12]} from {message.sender} ({_size(size)})"
        if isinstance(message, ReleaseMessage):
            return f"release {message.request[:12]} by {message.orchestrator}: {message.reason}"
        if isinstance(message, InferRequest):
            return (
                f"request {message.request[:8]}: {message.model} {message.strategy or '(default strategy)'} "
                f"image {describe_tensor(message.image)}"
            )
        if isinstance(message, InferResponse):
            if message.error:
                return f"response {message.request[:8]}: ERROR {message.error}"
            total = message.timings.get("total_s", 0.0) * 1e3
            return (
                f"response {message.request[:8]} from {message.orchestrator} ({message.strategy}): "
                f"{describe_tensor(message.logits)} in {total:.1f} ms on {', '.join(message.devices)}"
            )
        if isinstance(message, Chunk):
            return f"chunk {message.index + 1}/{message.count} of {message.id}"
        if isinstance(message, OrchestratorState):
            return f"orchestrator {message.orchestrator} {'ONLINE' if message.online else 'OFFLINE'}"
        return f"{message.kind} message"

    def table(self) -> str:
        """The device table: who is online and what it is doing."""
        busy = {device: task for task, (device, _) in self.in_flight.items() if device}
        lines = [f"{len(self.devices)} device(s) online"]
        for name, state in sorted(self.devices.items()):
            link = state.link
            doing = f"busy: task {busy[name]}" if name in busy else "idle"
            speed = f"{link.bandwidth_mbit:7.0f} Mbit/s {link.latency_ms:6.2f} ms" if link else "?"
            lines.append(f"  {name:12s} {speed}  {doing}")
        return "\n".join(lines)
