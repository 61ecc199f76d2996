"""Live view of the traffic: every edgeci message decoded, everything else shown raw.

:class:`TrafficView` is pure (payloads in, lines out), so the same formatting serves
``edgeci watch`` and its tests. Tensors are shown as dtype/shape/bytes, never as
numbers; the view keeps the device table and the tasks in flight, so a result line
says how long its task took and the device table says what each device is doing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.wire import (
    ROOT,
    AuctionCall,
    Award,
    BidMessage,
    Chunk,
    DeviceState,
    InferRequest,
    InferResponse,
    Message,
    Reassembler,
    ResultMessage,
    TaskMessage,
)

__all__ = ["TrafficView", "describe_tensor"]


def describe_tensor(value: Mapping[str, Any]) -> str:
    data = value.get("data", b"")
    return f"{value.get('dtype')}{list(value.get('shape', []))} {len(data) if isinstance(data, bytes) else '?'} B"


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
            link = message.link
            return (
                f"device {message.device} ONLINE v{message.version}: link {link.get('bandwidth_mbit', 0):.0f} "
                f"Mbit/s {link.get('latency_ms', 0):.2f} ms, models {', '.join(message.models)}"
            )
        if isinstance(message, AuctionCall):
            return (
                f"auction {message.round} CALL by {message.orchestrator}: {message.model} block "
                f"{message.block[0]}-{message.block[1]}, {len(message.items)} items, "
                f"deadline {message.deadline_ms:.0f} ms"
            )
        if isinstance(message, BidMessage):
            best = min(message.alone_s) if message.alone_s else float("nan")
            return (
                f"auction {message.round} BID from {message.device}: queue {message.queue_s * 1e3:.1f} ms, "
                f"best item {best * 1e3:.1f} ms"
            )
        if isinstance(message, Award):
            runs = ", ".join(f"{d}: items {a}-{b}" for d, a, b in message.runs)
            return f"auction {message.round} AWARD: {runs}"
        if isinstance(message, TaskMessage):
            self.in_flight[message.task] = (topic.split("/")[3], now)
            return (
                f"task {message.task} of {message.request[:8]}: {message.model} block "
                f"{message.block[0]}-{message.block[1]} out {message.out_region} in "
                f"{describe_tensor(message.input)} ({_size(size)})"
            )
        if isinstance(message, ResultMessage):
            sent = self.in_flight.pop(message.task, None)
            after = f" after {(now - sent[1]) * 1e3:.1f} ms" if sent else ""
            if message.error:
                return f"result {message.task} from {message.device}: ERROR {message.error}{after}"
            compute = message.timings.get("compute_s", 0.0) * 1e3
            return (
                f"result {message.task} from {message.device}: {describe_tensor(message.output)} "
                f"({_size(size)}), compute {compute:.1f} ms{after}"
            )
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
        return f"{message.kind} message"

    def table(self) -> str:
        """The device table: who is online and what it is doing."""
        busy = {device: task for task, (device, _) in self.in_flight.items() if device}
        lines = [f"{len(self.devices)} device(s) online"]
        for name, state in sorted(self.devices.items()):
            link = state.link
            doing = f"busy: task {busy[name]}" if name in busy else "idle"
            speed = f"{link.get('bandwidth_mbit', 0):7.0f} Mbit/s {link.get('latency_ms', 0):6.2f} ms"
            lines.append(f"  {name:12s} {speed}  {doing}")
        return "\n".join(lines)
