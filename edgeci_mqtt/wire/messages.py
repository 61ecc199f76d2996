"""Every message, declared once with typed fields; :func:`encode` and :func:`decode`.

Payloads are msgpack maps with the schema version ``v``, the message ``type`` and the
fields. A field's annotation is its contract (see :mod:`edgeci_mqtt.wire.values`):
:func:`decode` returns a message whose regions are :class:`TileRegion`, blocks
:class:`FusedBlock`, profiles :class:`DeviceProfile`, tensors NumPy arrays, every
number finite and in range, or raises one :class:`WireError` naming the field.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Annotated, Any, ClassVar, TypeVar

import msgpack
from numpy.typing import NDArray

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.text import brief
from edgeci_mqtt.timeline import Interval
from edgeci_mqtt.wire.compression import PackedArray
from edgeci_mqtt.wire.topics import SCHEMA_VERSION
from edgeci_mqtt.wire.values import Id, MaxLen, Range, decode_record, encode_record

__all__ = [
    "CONTENT_TYPE",
    "MAX_INPUT_SIDE",
    "MAX_SECONDS",
    "MAX_TRAFFIC_RECORDS",
    "MESSAGE_TYPES",
    "AuctionCall",
    "AuctionLot",
    "Award",
    "AwardRun",
    "BidMessage",
    "Chunk",
    "DeviceState",
    "Failure",
    "FinishRole",
    "GoMessage",
    "InferAccepted",
    "InferRequest",
    "InferResponse",
    "LotPrices",
    "Message",
    "OrchestratorState",
    "PenaltyMessage",
    "ProgramMessage",
    "ProgramStep",
    "Progress",
    "ReleaseMessage",
    "RowsMessage",
    "SliceFrom",
    "StepDone",
    "StepInput",
    "StepReport",
    "StepSend",
    "TailRole",
    "TensorSummary",
    "TrafficMessage",
    "TrafficRecord",
    "VectorMessage",
    "WatcherState",
    "WeightsMessage",
    "decode",
    "encode",
]

CONTENT_TYPE = "application/vnd.edgeci.v1+msgpack"
"""MQTT v5 content type of every payload, so generic tools can tell them apart."""

MAX_INPUT_SIDE = 8192
MAX_ITEMS_PER_ROUND = 4096
MAX_LOTS = 64
"""Blocks in one auction round (a plan has at most one per stage: VGG-16 has 31)."""

Ident = Annotated[str, Id]
"""Ids travel in topics and logs: one topic segment of printable characters."""
Name = Annotated[str, MaxLen(128)]
Text = Annotated[str, MaxLen(4096)]
MAX_SECONDS = 1e6
"""The longest duration a message may carry (about 11.6 days)."""
Seconds = Annotated[float, Range(0.0, MAX_SECONDS)]
WallClock = Annotated[float, Range(0.0, 1e11)]
Side = Annotated[int, Range(1, MAX_INPUT_SIDE)]
ImageSize = tuple[Side, Side]
Prices = Annotated[tuple[Seconds, ...], MaxLen(MAX_ITEMS_PER_ROUND)]
Array = NDArray[Any]


@dataclass(frozen=True)
class Message:
    """Base of every message: a ``type`` tag and typed fields."""

    kind: ClassVar[str] = ""


M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class DeviceState(Message):
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
class AuctionCall(Message):
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
class Award(Message):
    """Who won lot ``lot`` of a round."""

    kind: ClassVar[str] = "award"
    round: Ident
    lot: Annotated[int, Range(0, MAX_LOTS - 1)]
    runs: Annotated[tuple[AwardRun, ...], MaxLen(MAX_ITEMS_PER_ROUND)]


@dataclass(frozen=True)
class StepInput:
    """Rows and columns ``region`` of a step's input map, held by ``source``: the device
    itself, another device (which sends them on its rows topic), or the orchestrator
    (they come in the program's ``image``)."""

    region: TileRegion
    source: Ident


@dataclass(frozen=True)
class StepSend:
    """Once the step is computed, send ``region`` of its output to ``to`` (a device's rows
    topic, or the orchestrator's results topic for the last block)."""

    region: TileRegion
    to: Ident


@dataclass(frozen=True)
class ProgramStep:
    """Compute ``out_region`` of ``block`` once every input piece is here."""

    block: FusedBlock
    out_region: TileRegion
    inputs: Annotated[tuple[StepInput, ...], MaxLen(4096)]
    sends: Annotated[tuple[StepSend, ...], MaxLen(4096)] = ()


@dataclass(frozen=True)
class TailRole:
    """The tail part of a program: once every piece of the final map (``inputs``) is here,
    run the whole tail and send the logits to ``to`` (``features`` None), or the head and
    the first fully connected layer's output ``features``, and send that slice to ``to``."""

    inputs: Annotated[tuple[StepInput, ...], MaxLen(4096)]
    to: Ident
    features: Span | None = None


@dataclass(frozen=True)
class SliceFrom:
    """``source`` sends the first fully connected layer's output ``features``."""

    source: Ident
    features: Span


@dataclass(frozen=True)
class FinishRole:
    """Gather the first layer's slices, run the rest of the tail, send the logits to ``to``."""

    slices: Annotated[tuple[SliceFrom, ...], MaxLen(4096)]
    to: Ident


@dataclass(frozen=True, kw_only=True)
class ProgramMessage(Message):
    """A device's whole part of one request on ``devices/<id>/tasks``: its steps in block
    order, and the rows its first step reads from the orchestrator (``input``: the
    ``input_region`` of the map at ``input_boundary``, where the attempt starts; the image
    for a first attempt). Pieces the orchestrator holds at later boundaries come as rows
    once it has them. The device drops everything of the request ``expires_s`` after
    receiving it, on a release, or once the client's deadline (``deadline_s`` after
    receiving it) has passed."""

    kind: ClassVar[str] = "program"
    request: Ident
    orchestrator: Ident
    model: Name
    digest: Name
    input_hw: ImageSize
    steps: Annotated[tuple[ProgramStep, ...], MaxLen(1024)]
    expires_s: Seconds
    deadline_s: Seconds = 0.0  # the client's deadline, seconds left when sent (0: none): past it, work is dropped
    input_boundary: Annotated[int, Range(0, 1 << 20)] = 0
    input_region: TileRegion | None = None
    input: Array | None = field(default=None, compare=False)
    tail: TailRole | None = None
    finish: FinishRole | None = None
    barrier: bool = False  # report each step done; start a step after the first block only on a go
    compress: bool = True  # rows may travel compressed
    trace: bool = False  # report when each item ran, for the request's timeline
    prepare: TailRows | None = None  # tail weights to make when idle, for a cheaper placement later


@dataclass(frozen=True)
class RowsMessage(Message):
    """Rows of the map at stage boundary ``boundary`` for a step of ``request``, on
    ``devices/<dst>/rows/<sender>/<request>`` (or, the last block's, on the orchestrator's results
    topic), compressed when that pays (:func:`~edgeci_mqtt.wire.compression.choose_codec`)."""

    kind: ClassVar[str] = "rows"
    request: Ident
    sender: Ident
    boundary: Annotated[int, Range(0, 1 << 20)]
    region: TileRegion
    rows: PackedArray = field(compare=False)


@dataclass(frozen=True)
class VectorMessage(Message):
    """Output ``features`` of the tail's first fully connected layer (a slice for the
    finisher), or the logits (for the orchestrator), from ``sender`` for ``request``."""

    kind: ClassVar[str] = "vector"
    request: Ident
    sender: Ident
    features: Span
    values: PackedArray = field(compare=False)
    logits: bool = False


@dataclass(frozen=True)
class StepDone(Message):
    """A device finished its step of the block ending at ``boundary`` (``flow`` with a barrier)."""

    kind: ClassVar[str] = "done"
    request: Ident
    device: Ident
    boundary: Annotated[int, Range(0, 1 << 20)]


@dataclass(frozen=True)
class Progress(Message):
    """How far ``device`` got with a request it was told to drop (a :class:`ReleaseMessage`
    asking for a report): ``item``, the first item of its program it had not run (the
    program's length: it ran them all; -1: its program never arrived), and the senders
    whose pieces that item still lacked (none: it had everything, so it was slow itself)."""

    kind: ClassVar[str] = "progress"
    request: Ident
    device: Ident
    item: Annotated[int, Range(-1, 1 << 20)]
    waiting_for: Annotated[tuple[Ident, ...], MaxLen(4096)] = ()


@dataclass(frozen=True)
class StepReport(Message):
    """When a device ran work item ``item`` of ``request`` (a traced ``flow`` request), on its
    own wall clock: started, computed, its outputs sent. ``block``/``region`` name a block
    step's tile (none for the tail)."""

    kind: ClassVar[str] = "report"
    request: Ident
    device: Ident
    item: Annotated[int, Range(0, 1 << 20)]
    _: KW_ONLY
    started_at: WallClock
    computed_at: WallClock
    sent_at: WallClock
    block: FusedBlock | None = None
    region: TileRegion | None = None


@dataclass(frozen=True)
class GoMessage(Message):
    """Every device finished the blocks ending at ``boundary``: steps reading it may start."""

    kind: ClassVar[str] = "go"
    request: Ident
    orchestrator: Ident
    boundary: Annotated[int, Range(0, 1 << 20)]


@dataclass(frozen=True)
class ReleaseMessage(Message):
    """The request is over (answered, failed or restarted): drop its program and rows."""

    kind: ClassVar[str] = "release"
    request: Ident
    orchestrator: Ident
    reason: Text = ""
    report: bool = False  # answer with a :class:`Progress` (an attempt ran late: who held it up?)


@dataclass(frozen=True)
class Failure(Message):
    """``device`` could not run its program of ``request`` (refused on arrival: ``item`` -1)
    or failed its item ``item``: the orchestrator gives the device up at once instead of
    waiting for its deadline."""

    kind: ClassVar[str] = "failure"
    request: Ident
    device: Ident
    item: Annotated[int, Range(-1, 1 << 20)]
    error: Text


@dataclass(frozen=True)
class OrchestratorState(Message):
    """Retained on ``orchestrators/<id>/state``: the birth message, or the will (online false)."""

    kind: ClassVar[str] = "orchestrator-state"
    orchestrator: Ident
    online: bool


@dataclass(frozen=True)
class InferRequest(Message):
    kind: ClassVar[str] = "infer"
    request: Ident
    model: Name
    image: Array = field(compare=False)
    _: KW_ONLY
    strategy: Name = ""
    trace: bool = False  # answer with the measured timeline
    deadline_s: Seconds = 0.0  # seconds the client waits from sending (0: no deadline); later, it is dropped


@dataclass(frozen=True)
class InferAccepted(Message):
    """On the client's response topic: ``orchestrator`` queued the request (``ahead``
    requests of this client before it), so the client knows whose will to watch."""

    kind: ClassVar[str] = "accepted"
    request: Ident
    orchestrator: Ident
    ahead: Annotated[int, Range(0, 1 << 20)] = 0


@dataclass(frozen=True)
class InferResponse(Message):
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
class Chunk(Message):
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


@dataclass(frozen=True)
class WatcherState(Message):
    """Retained on ``watchers/<id>/state``: a watcher is watching (its will: it is not)."""

    kind: ClassVar[str] = "watcher-state"
    watcher: Ident
    online: bool


MAX_TRAFFIC_RECORDS = 512
"""Records in one traffic message (a sender reports about every 200 ms; a busy device sends
a few dozen messages in that time)."""
Bytes = Annotated[int, Range(0, 1 << 40)]


@dataclass(frozen=True)
class TensorSummary:
    """What a tensor is, without its numbers: dtype, shape and size in bytes."""

    dtype: Annotated[str, MaxLen(32)]
    shape: Annotated[tuple[Annotated[int, Range(0, 1 << 31)], ...], MaxLen(8)]
    nbytes: Bytes


@dataclass(frozen=True)
class TrafficRecord:
    """One message a device or orchestrator sent on a data topic, as the watcher may see it:
    the topic, the kind, its size on the wire and the fields a watch line shows (blocks,
    regions, tensors as :class:`TensorSummary`, codec, step counts, timings, errors);
    never the data itself. ``before_s``: it was sent this long before its batch."""

    topic: Annotated[str, MaxLen(1024)]
    kind: Name
    size: Bytes
    _: KW_ONLY
    before_s: Seconds = 0.0
    request: Ident | None = None
    task: Ident | None = None
    orchestrator: Ident | None = None
    model: Name = ""
    stage: Name = ""
    block: FusedBlock | None = None
    region: TileRegion | None = None
    tensor: TensorSummary | None = None
    codec: Name = ""
    steps: Annotated[int, Range(0, 1 << 20)] | None = None  # a program's steps, a report's item, a stage's tensors
    tail: bool = False
    finish: bool = False
    boundary: Annotated[int, Range(0, 1 << 20)] | None = None
    features: Span | None = None
    logits: bool = False
    queue_s: Seconds | None = None
    compute_s: Seconds | None = None
    encode_s: Seconds | None = None
    error: Text = ""
    reason: Text = ""


@dataclass(frozen=True)
class TrafficMessage(Message):
    """A batch of :class:`TrafficRecord` on ``devices/<id>/traffic`` or
    ``orchestrators/<id>/traffic``, sent only while a watcher is online; ``dropped``:
    records left out because the batch was full."""

    kind: ClassVar[str] = "traffic"
    sender: Ident
    records: Annotated[tuple[TrafficRecord, ...], MaxLen(MAX_TRAFFIC_RECORDS)]
    dropped: Annotated[int, Range(0, 1 << 40)] = 0


MESSAGE_TYPES: dict[str, type[Message]] = {
    m.kind: m
    for m in (
        DeviceState,
        AuctionCall,
        BidMessage,
        Award,
        Failure,
        InferRequest,
        InferResponse,
        InferAccepted,
        OrchestratorState,
        WeightsMessage,
        ProgramMessage,
        RowsMessage,
        VectorMessage,
        StepDone,
        StepReport,
        Progress,
        PenaltyMessage,
        GoMessage,
        ReleaseMessage,
        WatcherState,
        TrafficMessage,
        Chunk,
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
