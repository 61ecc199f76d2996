"""Frames: payloads larger than one publish travel as ``chunk`` messages.

An oversize QoS 1 publish makes the broker drop the connection and paho resend it
forever, so :func:`frames` splits a payload over :data:`MAX_PAYLOAD_BYTES` into chunk
frames and :class:`Reassembler` puts them back together, with bounded memory and age.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.wire.base import Message
from edgeci_mqtt.wire.messages import ChunkMessage, decode, encode
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
    return [encode(ChunkMessage(ident, i, len(parts), part)) for i, part in enumerate(parts)]


@dataclass(frozen=True)
class Allowance:
    """What one topic's messages may take on a receiver: ``bytes`` of frames held while
    incomplete, counted with every other message of the same ``pool``, and the arrays
    the whole message may declare (the same number). A receiver derives it from the
    topic before it holds a single frame (rows: what a program of its own still waits
    for from that sender)."""

    pool: str
    bytes: int


@dataclass
class _Partial:
    """The frames of one chunked message so far."""

    count: int
    pool: str
    born: float
    parts: dict[int, bytes] = field(default_factory=dict)
    held: int = 0  # its frames' data, each charged at least FRAME_CHARGE


FRAME_CHARGE = 1024
"""What a held frame costs at least, whatever its data: empty frames are not free."""
MAX_PARTIALS_PER_POOL = 64
"""Incomplete messages one pool may hold at once (a sender has a few in flight, not thousands)."""


class Reassembler:
    """Decodes payloads, putting chunked ones back together with bounded memory and age.

    ``feed`` returns the decoded message (a plain payload at once, a chunked one when
    its last frame arrives) or ``None`` while frames are missing; anything malformed
    raises :class:`WireError`. Incomplete messages expire ``max_age_s`` after their first
    frame: :meth:`expire` is called on every frame and should also be called on a clock
    (a receiver's idle tick), or frames nobody completes would stay until the next one.
    Totals are kept as frames come and go, so a frame costs the same however many are held.
    """

    def __init__(self, max_bytes: int = 1 << 30, max_age_s: float = 60.0, max_message_bytes: int | None = None) -> None:
        """``max_bytes``: held in all; ``max_message_bytes``: one payload (default ``max_bytes``)."""
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self.max_message_bytes = max_bytes if max_message_bytes is None else max_message_bytes
        self._partials: dict[tuple[str, str], _Partial] = {}  # in the order their first frames came
        self._total = 0
        self._pool_bytes: dict[str, int] = {}
        self._pool_partials: dict[str, int] = {}

    @property
    def held_bytes(self) -> int:
        """Bytes of incomplete messages held (as charged)."""
        return self._total

    def pool_bytes(self, pool: str) -> int:
        return self._pool_bytes.get(pool, 0)

    def feed(self, topic: str, payload: bytes, allowance: Allowance | None = None) -> Message | None:
        """Decode ``payload``; with an ``allowance``, a frame that would take its pool over
        it, or a message declaring arrays larger than it, is refused before it is held
        or allocated (:class:`WireError`)."""
        if len(payload) > MAX_FRAME_BYTES:
            raise WireError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte frame limit")
        if allowance is not None and len(payload) > allowance.bytes:
            raise WireError(f"a frame of {len(payload)} bytes is more than {topic[:200]} may bring ({allowance.bytes})")
        message = self._decode(payload, allowance)
        if not isinstance(message, ChunkMessage):
            return message
        limit = self.max_message_bytes if allowance is None else min(self.max_message_bytes, allowance.bytes)
        if not 0 <= message.index < message.count <= 1 + limit // _CHUNK_DATA_BYTES:
            raise WireError(f"chunk {message.index} of {message.count} is out of range")
        key = (topic, message.id)
        self.expire()
        pool = topic if allowance is None else allowance.pool
        partial = self._partials.get(key)
        if partial is None:
            if self._pool_partials.get(pool, 0) >= MAX_PARTIALS_PER_POOL:
                raise WireError(f"chunked payload {message.id}: {MAX_PARTIALS_PER_POOL} are incomplete already")
            partial = self._partials[key] = _Partial(message.count, pool, time.monotonic())
            self._account(partial, 0, 1)
        elif partial.count != message.count:
            self._drop(key)
            raise WireError(f"chunk {message.id}: frame counts disagree")
        elif partial.pool != pool:  # a topic whose program arrived meanwhile moves to its own pool
            self._account(partial, -partial.held, -1)
            partial.pool = pool
            self._account(partial, partial.held, 1)
        size = max(len(message.data), FRAME_CHARGE)
        if allowance is not None and self.pool_bytes(pool) + size > allowance.bytes:
            self._drop(key)
            raise WireError(f"chunked payload {message.id} is more than {topic[:200]} may bring ({allowance.bytes})")
        if self._total + size > self.max_bytes:
            self._drop(key)
            raise WireError(f"chunked payload {message.id} exceeds the reassembly budget")
        if message.index in partial.parts:  # delivered again (QoS 1): the first copy stays
            return None
        partial.parts[message.index] = message.data
        partial.held += size
        self._account(partial, size, 0)
        if len(partial.parts) < partial.count:
            return None
        self._drop(key)
        whole = self._decode(b"".join(partial.parts[i] for i in range(partial.count)), allowance)
        if isinstance(whole, ChunkMessage):
            raise WireError("a chunk cannot contain a chunk")
        return whole

    def _account(self, partial: _Partial, size: int, partials: int) -> None:
        self._total += size
        self._pool_bytes[partial.pool] = self._pool_bytes.get(partial.pool, 0) + size
        self._pool_partials[partial.pool] = self._pool_partials.get(partial.pool, 0) + partials
        if not self._pool_partials[partial.pool]:
            del self._pool_partials[partial.pool], self._pool_bytes[partial.pool]

    @staticmethod
    def _decode(payload: bytes, allowance: Allowance | None) -> Message:
        if allowance is None:
            return decode(payload)
        with arrays_within(allowance.bytes):
            return decode(payload)

    def _drop(self, key: tuple[str, str]) -> None:
        partial = self._partials.pop(key, None)
        if partial is not None:
            self._account(partial, -partial.held, -1)

    def expire(self) -> int:
        """Drop incomplete messages older than ``max_age_s``; how many were dropped."""
        now, old = time.monotonic(), []
        for key, partial in self._partials.items():  # oldest first: stop at the first young one
            if now - partial.born <= self.max_age_s:
                break
            old.append(key)
        for key in old:
            self._drop(key)
        return len(old)
