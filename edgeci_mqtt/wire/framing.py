"""Frames: payloads larger than one publish travel as ``chunk`` messages.

An oversize QoS 1 publish makes the broker drop the connection and paho resend it
forever, so :func:`frames` splits a payload over :data:`MAX_PAYLOAD_BYTES` into chunk
frames and :class:`Reassembler` puts them back together, with bounded memory and age.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.wire.messages import Chunk, Message, decode, encode
from edgeci_mqtt.wire.tensors import arrays_within

__all__ = ["BROKER_MAX_PACKET_BYTES", "MAX_FRAME_BYTES", "MAX_PAYLOAD_BYTES", "Allowance", "Reassembler", "frames"]

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


@dataclass(frozen=True)
class Allowance:
    """What one topic's messages may take on a receiver: ``bytes`` of frames held while
    incomplete, counted with every other message of the same ``pool``, and the arrays
    the whole message may declare (the same number). A receiver derives it from the
    topic before it holds a single frame (rows: what a program of its own still waits
    for from that sender)."""

    pool: str
    bytes: int


class Reassembler:
    """Decodes payloads, putting chunked ones back together with bounded memory and age.

    ``feed`` returns the decoded message (a plain payload at once, a chunked one when
    its last frame arrives) or ``None`` while frames are missing; anything malformed
    raises :class:`WireError`. Incomplete messages expire ``max_age_s`` after their first
    frame: :meth:`expire` is called on every frame and should also be called on a clock
    (a receiver's idle tick), or frames nobody completes would stay until the next one.
    """

    def __init__(self, max_bytes: int = 1 << 30, max_age_s: float = 60.0, max_message_bytes: int | None = None) -> None:
        """``max_bytes``: held in all; ``max_message_bytes``: one payload (default ``max_bytes``)."""
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self.max_message_bytes = max_bytes if max_message_bytes is None else max_message_bytes
        self._parts: dict[tuple[str, str], dict[int, bytes]] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._born: dict[tuple[str, str], float] = {}
        self._pools: dict[tuple[str, str], str] = {}
        self._held: dict[tuple[str, str], int] = {}

    @property
    def held_bytes(self) -> int:
        """Bytes of incomplete messages held."""
        return sum(self._held.values())

    def pool_bytes(self, pool: str) -> int:
        return sum(n for key, n in self._held.items() if self._pools.get(key) == pool)

    def feed(self, topic: str, payload: bytes, allowance: Allowance | None = None) -> Message | None:
        """Decode ``payload``; with an ``allowance``, a frame that would take its pool over
        it, or a message declaring arrays larger than it, is refused before it is held
        or allocated (:class:`WireError`)."""
        if len(payload) > MAX_FRAME_BYTES:
            raise WireError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte frame limit")
        if allowance is not None and len(payload) > allowance.bytes:
            raise WireError(f"a frame of {len(payload)} bytes is more than {topic[:200]} may bring ({allowance.bytes})")
        message = self._decode(payload, allowance)
        if not isinstance(message, Chunk):
            return message
        limit = self.max_message_bytes if allowance is None else min(self.max_message_bytes, allowance.bytes)
        if not 0 <= message.index < message.count <= 1 + limit // _CHUNK_DATA_BYTES:
            raise WireError(f"chunk {message.index} of {message.count} is out of range")
        key = (topic, message.id)
        self.expire()
        if self._counts.setdefault(key, message.count) != message.count:
            self._drop(key)
            raise WireError(f"chunk {message.id}: frame counts disagree")
        pool = topic if allowance is None else allowance.pool
        self._pools[key] = pool  # a topic whose program arrived meanwhile moves to its own pool
        size = len(message.data)
        if allowance is not None and self.pool_bytes(pool) + size > allowance.bytes:
            self._drop(key)
            raise WireError(f"chunked payload {message.id} is more than {topic[:200]} may bring ({allowance.bytes})")
        if self.held_bytes + size > self.max_bytes:
            self._drop(key)
            raise WireError(f"chunked payload {message.id} exceeds the reassembly budget")
        self._born.setdefault(key, time.monotonic())
        parts = self._parts.setdefault(key, {})
        self._held[key] = self._held.get(key, 0) + size - len(parts.get(message.index, b""))
        parts[message.index] = message.data
        if len(parts) < message.count:
            return None
        self._drop(key)
        whole = self._decode(b"".join(parts[i] for i in range(message.count)), allowance)
        if isinstance(whole, Chunk):
            raise WireError("a chunk cannot contain a chunk")
        return whole

    @staticmethod
    def _decode(payload: bytes, allowance: Allowance | None) -> Message:
        if allowance is None:
            return decode(payload)
        with arrays_within(allowance.bytes):
            return decode(payload)

    def _drop(self, key: tuple[str, str]) -> None:
        self._parts.pop(key, None)
        self._counts.pop(key, None)
        self._born.pop(key, None)
        self._pools.pop(key, None)
        self._held.pop(key, None)

    def expire(self) -> int:
        """Drop incomplete messages older than ``max_age_s``; how many were dropped."""
        now = time.monotonic()
        old = [k for k, born in self._born.items() if now - born > self.max_age_s]
        for key in old:
            self._drop(key)
        return len(old)
