"""Every message, declared once with typed fields; :func:`encode` and :func:`decode`.

Payloads are msgpack maps with the schema version ``v``, the message ``type`` and the
fields. A field's annotation is its contract (see :mod:`edgeci_mqtt.wire.values`):
:func:`decode` returns a message whose regions are :class:`TileRegion`, blocks
:class:`FusedBlock`, profiles :class:`DeviceProfile`, tensors NumPy arrays, every
number finite and in range, or raises one :class:`WireError` naming the field.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Annotated, ClassVar

import msgpack

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.text import brief
from edgeci_mqtt.timeline import Interval
from edgeci_mqtt.wire.base import (
    MAX_ITEMS_PER_ROUND,
    MAX_LOTS,
    Array,
    Ident,
    ImageSize,
    M,
    Message,
    Name,
    Prices,
    Seconds,
    Text,
)
from edgeci_mqtt.wire.programs import (
    DoneMessage,
    FailureMessage,
    GoMessage,
    ProgramMessage,
    ProgressMessage,
    ReleaseMessage,
    ReportMessage,
    RowsMessage,
    VectorMessage,
)
from edgeci_mqtt.wire.topics import SCHEMA_VERSION
from edgeci_mqtt.wire.traffic_records import (
    TrafficMessage,
    WatcherStateMessage,
)
from edgeci_mqtt.wire.values import Id, MaxLen, Range, decode_record, encode_record

__all__ = [
    "MESSAGE_TYPES",
    "AcceptedMessage",
    "AuctionLot",
    "AwardMessage",
    "AwardRun",
    "BidMessage",
    "CallMessage",
    "ChunkMessage",
    "DeviceStateMessage",
    "LotPrices",
    "OrchestratorStateMessage",
    "PenaltyMessage",
    "RequestMessage",
    "ResponseMessage",
    "WeightsMessage",
    "decode",
    "encode",
]


@dataclass(frozen=True)
class DeviceStateMessage(Message):
    """Retained on ``devices/<id>/state``: the birth message, or the will (online false)."""

    kind: ClassVar[str] = "state"
    device: Ident
    online: bool
    _: KW_ONLY
    profile: DeviceProfile | None = None
    link: Link | None = None
    models: dict[str, Name] = field(default_factory=dict)  # model name -> weights digest
    version: Name = ""
    weights: dict[str, tuple[Name, ...]] = field(default_factory=dict)  # cached on disk: digest -> stage names
    memory_bytes: Annotated[int, Range(0, 1 << 50)] | None = None  # tail weights it can take on (None: no limit)
    tails: Annotated[dict[Name, TailRows], MaxLen(16)] = field(default_factory=dict)  # model name -> tail weights made


@dataclass(frozen=True)
class AuctionLot:
    """One block's items: full-width row strips of its output."""

    block: FusedBlock
    items: Annotated[tuple[Span, ...], MaxLen(MAX_ITEMS_PER_ROUND)]


@dataclass(frozen=True)
class CallMessage(Message):
    """Every lot of one request's round on ``auctions/<round>/call``, in one message: a
    device answers once, however many blocks the plan has, so a slow device pays for
    taking a call and sending its bids once per request, not once per block
    (docs/RUNTIME.md, one inference)."""

    kind: ClassVar[str] = "call"
    round: Ident
    orchestrator: Ident
    model: Name
    input_hw: ImageSize
    lots: Annotated[tuple[AuctionLot, ...], MaxLen(MAX_LOTS)]
    window_s: Annotated[float, Range(0.0, 600.0)]  # how long the orchestrator waits for bids
    flow: bool = False  # price for ``flow``: the output stays on the device (but the last block's)
    sharing: Annotated[dict[str, Annotated[int, Range(1, MAX_ITEMS_PER_ROUND)]], Id, MaxLen(MAX_LOTS)] = field(
        default_factory=dict
    )
    """How many of the called devices sit behind each shared medium, by its name: a device
    behind one prices its transfers at its share of it, as the orchestrator's plans do."""


@dataclass(frozen=True)
class LotPrices:
    """A device's prices for every item of a lot: alone, and extending its previous item."""

    alone_s: Prices
    extend_s: Prices


@dataclass(frozen=True)
class BidMessage(Message):
    """A device's prices for every lot of a round, in the call's order."""

    kind: ClassVar[str] = "bid"
    round: Ident
    device: Ident
    queue_s: Seconds
    lots: Annotated[tuple[LotPrices, ...], MaxLen(MAX_LOTS)]


@dataclass(frozen=True)
class AwardRun:
    """``device`` won the items ``items`` (a contiguous run) of a lot."""

    device: Ident
    items: Span


@dataclass(frozen=True)
class AwardMessage(Message):
    """Who won lot ``lot`` of a round."""

    kind: ClassVar[str] = "award"
    round: Ident
    lot: Annotated[int, Range(0, MAX_LOTS - 1)]
    runs: Annotated[tuple[AwardRun, ...], MaxLen(MAX_ITEMS_PER_ROUND)]


@dataclass(frozen=True)
class OrchestratorStateMessage(Message):
    """Retained on ``orchestrators/<id>/state``: the birth message, or the will (online false)."""

    kind: ClassVar[str] = "orchestrator-state"
    orchestrator: Ident
    online: bool


@dataclass(frozen=True)
class RequestMessage(Message):
    kind: ClassVar[str] = "infer"
    request: Ident
    model: Name
    image: Array = field(compare=False)
    _: KW_ONLY
    strategy: Name = ""
    trace: bool = False  # answer with the measured timeline
    deadline_s: Seconds = 0.0  # seconds the client waits from sending (0: no deadline); later, it is dropped


@dataclass(frozen=True)
class AcceptedMessage(Message):
    """On the client's response topic: ``orchestrator`` queued the request (``ahead``
    requests of this client before it), so the client knows whose will to watch."""

    kind: ClassVar[str] = "accepted"
    request: Ident
    orchestrator: Ident
    ahead: Annotated[int, Range(0, 1 << 20)] = 0


@dataclass(frozen=True)
class ResponseMessage(Message):
    kind: ClassVar[str] = "response"
    request: Ident
    _: KW_ONLY
    logits: Array | None = field(default=None, compare=False)
    error: Text = ""
    timings: dict[str, Seconds] = field(default_factory=dict)
    orchestrator: Name = ""
    strategy: Name = ""
    devices: Annotated[tuple[Ident, ...], MaxLen(4096)] = ()
    timeline: Annotated[tuple[Interval, ...], MaxLen(100_000)] = ()  # for a traced request


@dataclass(frozen=True)
class WeightsMessage(Message):
    """The parameters and buffers of one stage, for a device that fetches weights.

    Sent on the device's tasks topic, so it arrives before the tasks that need it;
    ``sha256`` covers every key, dtype, shape and byte (see ``runtime.weights``).
    """

    kind: ClassVar[str] = "weights"
    model: Name
    digest: Name
    stage: Name
    tensors: dict[str, Array] = field(compare=False)
    sha256: Name


@dataclass(frozen=True)
class ChunkMessage(Message):
    """One frame of a payload too large for one publish."""

    kind: ClassVar[str] = "chunk"
    id: Ident
    index: Annotated[int, Range(0, 1 << 20)]
    count: Annotated[int, Range(1, 1 << 20)]
    data: bytes


@dataclass(frozen=True)
class PenaltyMessage(Message):
    """``orchestrator`` holds ``device`` out for ``hold_s`` after its ``strikes``-th failure in
    a row (``why``): the other orchestrators hold it out as long."""

    kind: ClassVar[str] = "penalty"
    orchestrator: Ident
    device: Ident
    hold_s: Seconds
    strikes: Annotated[int, Range(1, 1 << 20)]
    why: Text = ""


MESSAGE_TYPES: dict[str, type[Message]] = {
    m.kind: m
    for m in (
        DeviceStateMessage,
        CallMessage,
        BidMessage,
        AwardMessage,
        FailureMessage,
        RequestMessage,
        ResponseMessage,
        AcceptedMessage,
        OrchestratorStateMessage,
        WeightsMessage,
        ProgramMessage,
        RowsMessage,
        VectorMessage,
        DoneMessage,
        ReportMessage,
        ProgressMessage,
        PenaltyMessage,
        GoMessage,
        ReleaseMessage,
        WatcherStateMessage,
        TrafficMessage,
        ChunkMessage,
    )
}


def encode(message: Message) -> bytes:
    return msgpack.packb({"v": SCHEMA_VERSION, "type": message.kind, **encode_record(message)}, use_bin_type=True)


def decode(payload: bytes, expected: type[M] | None = None) -> Message:
    """Validate and decode one payload; :class:`WireError` names what is wrong."""
    if not isinstance(payload, bytes | bytearray):
        raise WireError("payload is not bytes")
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise WireError(f"not msgpack: {type(exc).__name__}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise WireError("payload is not a msgpack map with string keys")
    version = data.pop("v", None)
    if version != SCHEMA_VERSION:
        raise WireError(f"unknown schema version {brief(version)} (this side speaks {SCHEMA_VERSION})")
    kind = data.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown message type {brief(kind)}")
    if expected is not None and cls is not expected:
        raise WireError(f"expected a {expected.kind} message, got {kind!r}")
    try:
        message: Message = decode_record(cls, data, kind)
    except RecursionError as exc:  # msgpack nests up to 1024 levels; no field of ours is that deep
        raise WireError(f"{kind}: nested too deeply") from exc
    return message
