"""Frames: payloads larger than one publish travel as ``chunk`` messages.

An oversize QoS 1 publish makes the broker drop the connection and paho resend it
forever, so :func:`frames` splits a payload over :data:`MAX_PAYLOAD_BYTES` into chunk
frames and :class:`Reassembler` puts them back together, with bounded memory and age.
"""

from __future__ import annotations

import time
import uuid

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.wire.messages import Chunk, Message, decode, encode

__all__ = ["BROKER_MAX_PACKET_BYTES", "MAX_FRAME_BYTES", "MAX_PAYLOAD_BYTES", "Reassembler", "frames"]

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
"""Largest payload the code publishes; the broker's ``max_packet_size`` adds room for headers."""
BROKER_MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 64 * 1024
MAX_FRAME_BYTES = MAX_PAYLOAD_BYTES + 8192
"""Largest frame a receiver accepts (a chunk's own encoding adds a few bytes)."""
_CHUNK_DATA_BYTES = MAX_PAYLOAD_BYTES - 4096


def frames(payload: bytes) -> list[bytes]:
    """``payload`` as one frame, or as ``chunk`` frames each within the size limit."""
    if len(payload) <= MAX_PAYLOAD_BYTES:
        return [payload]
    ident = uuid.uuid4().hex
    parts = [payload[i : i + _CHUNK_DATA_BYTES] for i in range(0, len(payload), _CHUNK_DATA_BYTES)]
    return [encode(Chunk(ident, i, len(parts), part)) for i, part in enumerate(parts)]


class Reassembler:
    """Decodes payloads, putting chunked ones back together with bounded memory and age.

    ``feed`` returns the decoded message (a plain payload at once, a chunked one when
    its last frame arrives) or ``None`` while frames are missing; anything malformed
    raises :class:`WireError`.
    """

    def __init__(self, max_bytes: int = 1 << 30, max_age_s: float = 60.0, max_message_bytes: int | None = None) -> None:
        """``max_bytes``: held in all; ``max_message_bytes``: one payload (default ``max_bytes``)."""
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self.max_message_bytes = max_bytes if max_message_bytes is None else max_message_bytes
        self._parts: dict[tuple[str, str], dict[int, bytes]] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._born: dict[tuple[str, str], float] = {}

    def feed(self, topic: str, payload: bytes) -> Message | None:
        if len(payload) > MAX_FRAME_BYTES:
            raise WireError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte frame limit")
        message = decode(payload)
        if not isinstance(message, Chunk):
            return message
        if not 0 <= message.index < message.count <= 1 + self.max_message_bytes // _CHUNK_DATA_BYTES:
            raise WireError(f"chunk {message.index} of {message.count} is out of range")
        key = (topic, message.id)
        self._expire()
        if self._counts.setdefault(key, message.count) != message.count:
            self._drop(key)
            raise WireError(f"chunk {message.id}: frame counts disagree")
        self._born.setdefault(key, time.monotonic())
        self._parts.setdefault(key, {})[message.index] = message.data
        if sum(len(p) for parts in self._parts.values() for p in parts.values()) > self.max_bytes:
            self._drop(key)
            raise WireError(f"chunked payload {message.id} exceeds the reassembly budget")
        parts = self._parts[key]
        if len(parts) < message.count:
            return None
        self._drop(key)
        whole = decode(b"".join(parts[i] for i in range(message.count)))
        if isinstance(whole, Chunk):
            raise WireError("a chunk cannot contain a chunk")
        return whole

    def _drop(self, key: tuple[str, str]) -> None:
        self._parts.pop(key, None)
        self._counts.pop(key, None)
        self._born.pop(key, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, born in self._born.items() if now - born > self.max_age_s]:
            self._drop(key)
