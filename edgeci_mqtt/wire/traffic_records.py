"""What a watcher may see: watchers' states and the senders' traffic records (metadata, never data)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Annotated, ClassVar

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.wire.base import Ident, Message, Name, Seconds, Text
from edgeci_mqtt.wire.values import MaxLen, Range

__all__ = ["MAX_TRAFFIC_RECORDS", "TensorSummary", "TrafficMessage", "TrafficRecord", "WatcherStateMessage"]


@dataclass(frozen=True)
class WatcherStateMessage(Message):
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
