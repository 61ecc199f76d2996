"""The wire: every topic and every message, in one place, versioned.

Payloads are msgpack maps with a schema version ``v`` and a message ``type``; tensors
travel as ``{dtype, shape, data}`` with ``data`` the raw little-endian bytes (never
lists of floats, never pickle). :func:`decode` validates everything it returns and
raises :class:`WireError` for anything else, so a receiver logs one line and carries
on. A payload larger than :data:`MAX_PAYLOAD_BYTES` is split into ``chunk`` frames by
:func:`frames` and put back together by :class:`Reassembler`, because an oversize QoS 1
publish makes the broker drop the connection and paho resend it forever.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np
import torch

from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.errors import WireError

__all__ = [
    "CONTENT_TYPE",
    "MAX_PAYLOAD_BYTES",
    "ROOT",
    "SCHEMA_VERSION",
    "AuctionCall",
    "Award",
    "BidMessage",
    "Chunk",
    "DeviceState",
    "InferRequest",
    "InferResponse",
    "Reassembler",
    "ResultMessage",
    "TaskMessage",
    "Topics",
    "WeightsMessage",
    "decode",
    "decode_tensor",
    "encode",
    "encode_tensor",
    "frames",
]

SCHEMA_VERSION = 1
ROOT = f"edgeci/v{SCHEMA_VERSION}"
CONTENT_TYPE = "application/vnd.edgeci.v1+msgpack"
"""MQTT v5 content type of every payload, so generic tools can tell them apart."""

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
"""Largest payload the code publishes; the broker's ``max_packet_size`` adds room for headers."""
BROKER_MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 64 * 1024
_CHUNK_DATA_BYTES = MAX_PAYLOAD_BYTES - 4096
_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
}
_MAX_DIMS = 4
_MAX_ELEMENTS = 512 * 1024 * 1024 // 4


class Topics:
    """The topic tree (no leading slash). ``<id>`` segments must not contain + # or /."""

    root = ROOT
    device_states = f"{ROOT}/devices/+/state"
    auction_calls = f"{ROOT}/auctions/+/call"
    auction_bids_all = f"{ROOT}/auctions/+/bids/+"
    requests = f"{ROOT}/infer/requests"
    shared_requests = f"$share/edgeci-orchestrators/{ROOT}/infer/requests"
    all = f"{ROOT}/#"

    @staticmethod
    def _segment(value: str) -> str:
        if not value or any(c in value for c in "+#/") or value.startswith("$"):
            raise WireError(f"{value!r} cannot be a topic segment")
        return value

    @classmethod
    def device_state(cls, device: str) -> str:
        return f"{ROOT}/devices/{cls._segment(device)}/state"

    @classmethod
    def device_tasks(cls, device: str) -> str:
        return f"{ROOT}/devices/{cls._segment(device)}/tasks"

    @classmethod
    def device_probe(cls, device: str) -> str:
        return f"{ROOT}/devices/{cls._segment(device)}/probe"

    @classmethod
    def auction_call(cls, round_id: str) -> str:
        return f"{ROOT}/auctions/{cls._segment(round_id)}/call"

    @classmethod
    def auction_bids(cls, round_id: str, device: str) -> str:
        return f"{ROOT}/auctions/{cls._segment(round_id)}/bids/{cls._segment(device)}"

    @classmethod
    def auction_award(cls, round_id: str) -> str:
        return f"{ROOT}/auctions/{cls._segment(round_id)}/award"

    @classmethod
    def results(cls, orchestrator: str) -> str:
        return f"{ROOT}/orchestrators/{cls._segment(orchestrator)}/results"

    @classmethod
    def client_responses(cls, client: str) -> str:
        return f"{ROOT}/clients/{cls._segment(client)}/responses"


# ---------------------------------------------------------------- tensors


def encode_tensor(tensor: torch.Tensor | np.ndarray) -> dict[str, Any]:
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else tensor
    name = str(array.dtype)
    if name not in _DTYPES:
        raise WireError(f"dtype {name} cannot travel")
    array = np.asarray(array, dtype=_DTYPES[name], order="C")  # keeps 0-d shapes
    return {"dtype": name, "shape": list(array.shape), "data": array.tobytes()}


def decode_tensor(value: Any, where: str = "tensor") -> torch.Tensor:
    """A tensor from ``{dtype, shape, data}``, with every field checked."""
    if not isinstance(value, Mapping) or set(value) != {"dtype", "shape", "data"}:
        raise WireError(f"{where}: expected a map with exactly dtype, shape and data")
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise WireError(f"{where}: unknown dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise WireError(f"{where}: shape must be a list of at most {_MAX_DIMS} non-negative ints, got {shape!r}")
    count = math.prod(shape)  # Python ints: no overflow
    if count > _MAX_ELEMENTS:
        raise WireError(f"{where}: {count} elements is more than allowed")
    if not isinstance(data, bytes) or len(data) != count * _DTYPES[dtype].itemsize:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise WireError(f"{where}: shape {shape} of {dtype} needs {count * _DTYPES[dtype].itemsize} bytes, got {size}")
    array = np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


# ---------------------------------------------------------------- messages

M = TypeVar("M", bound="Message")


def _region(value: Any, where: str) -> TileRegion:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise WireError(f"{where}: expected [y0, y1, x0, x1] of non-negative ints, got {value!r}")
    y0, y1, x0, x1 = value
    if y1 <= y0 or x1 <= x0:
        raise WireError(f"{where}: empty region {value}")
    return TileRegion(Span(y0, y1), Span(x0, x1))


def region_list(region: TileRegion) -> list[int]:
    return [region.rows.start, region.rows.stop, region.cols.start, region.cols.stop]


@dataclass(frozen=True)
class Message:
    """Base of every message: a ``type`` tag and checked fields."""

    kind: ClassVar[str] = ""
    _checks: ClassVar[dict[str, Any]] = {}

    def to_wire(self) -> dict[str, Any]:
        # shallow: the values are already plain msgpack types; asdict would deep-copy them
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_wire(cls: type[M], data: Mapping[str, Any]) -> M:
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in data and _required(cls, n))
        if missing:
            raise WireError(f"{cls.kind}: missing field(s) {', '.join(missing)}")
        values = {}
        for name in names:
            if name not in data:
                continue
            value = data[name]
            expected = cls._checks.get(name)
            if expected is not None and not isinstance(value, expected):
                raise WireError(f"{cls.kind}.{name}: expected {_type_name(expected)}, got {type(value).__name__}")
            if isinstance(value, bool) and expected in (int, float, (int, float)):
                raise WireError(f"{cls.kind}.{name}: expected a number, got a boolean")
            values[name] = value
        return cls(**values)


def _type_name(expected: Any) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def _required(cls: type, name: str) -> bool:
    spec = next(f for f in fields(cls) if f.name == name)
    return spec.default is MISSING and spec.default_factory is MISSING


NUM = (int, float)


@dataclass(frozen=True)
class DeviceState(Message):
    """Retained on ``devices/<id>/state``: the birth message, or the will (online false)."""

    kind: ClassVar[str] = "state"
    _checks: ClassVar[dict[str, Any]] = {
        "device": str,
        "online": bool,
        "profile": dict,
        "link": dict,
        "models": dict,
        "version": str,
        "weights": dict,
    }
    device: str
    online: bool
    profile: dict[str, Any] = field(default_factory=dict)
    link: dict[str, Any] = field(default_factory=dict)  # bandwidth_mbit, latency_ms
    models: dict[str, str] = field(default_factory=dict)  # model name -> weights digest
    version: str = ""
    weights: dict[str, list[str]] = field(default_factory=dict)  # cached on disk: digest -> stage names


@dataclass(frozen=True)
class AuctionCall(Message):
    """Items of one block on ``auctions/<round>/call``: full-width row strips."""

    kind: ClassVar[str] = "call"
    _checks: ClassVar[dict[str, Any]] = {
        "round": str,
        "orchestrator": str,
        "model": str,
        "input_hw": list,
        "block": list,
        "items": list,
        "deadline_ms": NUM,
    }
    round: str
    orchestrator: str
    model: str
    input_hw: list[int]
    block: list[int]
    items: list[list[int]]  # [row start, row stop] of the block's output
    deadline_ms: float


@dataclass(frozen=True)
class BidMessage(Message):
    kind: ClassVar[str] = "bid"
    _checks: ClassVar[dict[str, Any]] = {
        "round": str,
        "device": str,
        "queue_s": NUM,
        "alone_s": list,
        "extend_s": list,
    }
    round: str
    device: str
    queue_s: float
    alone_s: list[float]
    extend_s: list[float]


@dataclass(frozen=True)
class Award(Message):
    kind: ClassVar[str] = "award"
    _checks: ClassVar[dict[str, Any]] = {"round": str, "runs": list}
    round: str
    runs: list[list[Any]]  # [device, first item, item stop]


@dataclass(frozen=True)
class TaskMessage(Message):
    """One tile task on ``devices/<id>/tasks``: compute ``out_region`` of ``block``."""

    kind: ClassVar[str] = "task"
    _checks: ClassVar[dict[str, Any]] = {
        "request": str,
        "task": str,
        "orchestrator": str,
        "model": str,
        "digest": str,
        "input_hw": list,
        "block": list,
        "in_region": list,
        "out_region": list,
        "input": dict,
    }
    request: str
    task: str
    orchestrator: str
    model: str
    digest: str
    input_hw: list[int]
    block: list[int]
    in_region: list[int]
    out_region: list[int]
    input: dict[str, Any]


@dataclass(frozen=True)
class ResultMessage(Message):
    """One output tile (or an error) on ``orchestrators/<oid>/results``."""

    kind: ClassVar[str] = "result"
    _checks: ClassVar[dict[str, Any]] = {
        "request": str,
        "task": str,
        "device": str,
        "out_region": list,
        "output": dict,
        "timings": dict,
        "error": str,
    }
    request: str
    task: str
    device: str
    out_region: list[int]
    output: dict[str, Any] = field(default_factory=dict)
    # queue_s, compute_s, encode_s; received_at, started_at, computed_at (the device's wall clock)
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class InferRequest(Message):
    kind: ClassVar[str] = "infer"
    _checks: ClassVar[dict[str, Any]] = {
        "request": str,
        "model": str,
        "strategy": str,
        "image": dict,
        "trace": bool,
    }
    request: str
    model: str
    image: dict[str, Any]
    strategy: str = ""
    trace: bool = False  # answer with the measured timeline (``edgeci_mqtt.timeline`` rows)


@dataclass(frozen=True)
class InferResponse(Message):
    kind: ClassVar[str] = "response"
    _checks: ClassVar[dict[str, Any]] = {
        "request": str,
        "logits": dict,
        "error": str,
        "timings": dict,
        "orchestrator": str,
        "strategy": str,
        "devices": list,
        "timeline": list,
    }
    request: str
    logits: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    orchestrator: str = ""
    strategy: str = ""
    devices: list[str] = field(default_factory=list)
    timeline: list[list[Any]] = field(default_factory=list)  # for a traced request


@dataclass(frozen=True)
class WeightsMessage(Message):
    """The parameters and buffers of one stage, for a device that fetches weights.

    Sent on the device's tasks topic, so it arrives before the tasks that need it;
    ``sha256`` covers every key, dtype, shape and byte (see ``runtime.weights``).
    """

    kind: ClassVar[str] = "weights"
    _checks: ClassVar[dict[str, Any]] = {"model": str, "digest": str, "stage": str, "tensors": dict, "sha256": str}
    model: str
    digest: str
    stage: str
    tensors: dict[str, Any]
    sha256: str


@dataclass(frozen=True)
class Chunk(Message):
    """One frame of a payload too large for one publish."""

    kind: ClassVar[str] = "chunk"
    _checks: ClassVar[dict[str, Any]] = {
        "id": str,
        "index": int,
        "count": int,
        "data": bytes,
    }
    id: str
    index: int
    count: int
    data: bytes


MESSAGE_TYPES: dict[str, type[Message]] = {
    m.kind: m
    for m in (
        DeviceState,
        AuctionCall,
        BidMessage,
        Award,
        TaskMessage,
        ResultMessage,
        InferRequest,
        InferResponse,
        WeightsMessage,
        Chunk,
    )
}


def encode(message: Message) -> bytes:
    return msgpack.packb({"v": SCHEMA_VERSION, "type": message.kind, **message.to_wire()}, use_bin_type=True)


def decode(payload: bytes, expected: type[M] | None = None) -> Message:
    """Validate and decode one payload; :class:`WireError` names what is wrong.

    Reassembled payloads may exceed the per-frame limit; ``Reassembler`` bounds them.
    """
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
        raise WireError(f"unknown schema version {version!r} (this side speaks {SCHEMA_VERSION})")
    kind = data.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown message type {kind!r}")
    if expected is not None and cls is not expected:
        raise WireError(f"expected a {expected.kind} message, got {kind!r}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise WireError(f"{kind}: unknown field(s) {', '.join(map(str, unknown))}")
    try:
        return cls.from_wire(data)
    except TypeError as exc:
        raise WireError(f"{kind}: {exc}") from exc


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

    def __init__(self, max_bytes: int = 1 << 30, max_age_s: float = 60.0) -> None:
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self._parts: dict[tuple[str, str], dict[int, bytes]] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._born: dict[tuple[str, str], float] = {}

    def feed(self, topic: str, payload: bytes) -> Message | None:
        if len(payload) > MAX_PAYLOAD_BYTES + 8192:
            raise WireError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte frame limit")
        message = decode(payload)
        if not isinstance(message, Chunk):
            return message
        if not 0 <= message.index < message.count <= 1 + self.max_bytes // _CHUNK_DATA_BYTES:
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
