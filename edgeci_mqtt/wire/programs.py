"""The executor's messages: a device's program, and what moves while it runs (rows, tail
slices and logits, go-aheads, releases, reports, progress, failures)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Annotated, ClassVar

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.wire.base import Array, Ident, ImageSize, Message, Name, Seconds, Text, WallClock
from edgeci_mqtt.wire.compression import PackedArray
from edgeci_mqtt.wire.values import MaxLen, Range

__all__ = [
    "DoneMessage",
    "FailureMessage",
    "FinishRole",
    "GoMessage",
    "ProgramMessage",
    "ProgramStep",
    "ProgressMessage",
    "ReleaseMessage",
    "ReportMessage",
    "RowsMessage",
    "SliceFrom",
    "StepInput",
    "StepSend",
    "TailRole",
    "VectorMessage",
    "WorkItem",
    "work_items",
]


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
class DoneMessage(Message):
    """A device finished its step of the block ending at ``boundary`` (``flow`` with a barrier)."""

    kind: ClassVar[str] = "done"
    request: Ident
    device: Ident
    boundary: Annotated[int, Range(0, 1 << 20)]


@dataclass(frozen=True)
class ProgressMessage(Message):
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
class ReportMessage(Message):
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
    report: bool = False  # answer with a :class:`ProgressMessage` (an attempt ran late: who held it up?)


@dataclass(frozen=True)
class FailureMessage(Message):
    """``device`` could not run its program of ``request`` (refused on arrival: ``item`` -1)
    or failed its item ``item``: the orchestrator gives the device up at once instead of
    waiting for its deadline."""

    kind: ClassVar[str] = "failure"
    request: Ident
    device: Ident
    item: Annotated[int, Range(-1, 1 << 20)]
    error: Text


WorkItem = ProgramStep | TailRole | FinishRole
"""What a program asks of a device, in order: its block steps, then its part of the tail,
then finishing the tail."""


def work_items(steps: tuple[ProgramStep, ...], tail: TailRole | None, finish: FinishRole | None) -> list[WorkItem]:
    """A program's items in the order a device runs them: the index a report or a progress
    names, on the device and on the orchestrator alike."""
    return [*steps, *([tail] if tail else []), *([finish] if finish else [])]
