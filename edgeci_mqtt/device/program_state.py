"""One program held by a device: the pieces its items wait for, typed, and how far it got.

A piece is keyed by what it is (:class:`Piece`: rows of a map at a boundary from a holder;
:class:`Slice`: a slice of the tail's first layer; :class:`Go`: the orchestrator's go
behind a barrier), so the store never tells keys apart by their shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from edgeci_mqtt.core.deadline import Deadline
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion
from edgeci_mqtt.wire import (
    FinishRole,
    ProgramMessage,
    ProgramStep,
    RowsMessage,
    TailRole,
    VectorMessage,
    WorkItem,
    work_items,
)

__all__ = [
    "Go",
    "HeldProgram",
    "Key",
    "Piece",
    "ReadyStep",
    "Slice",
    "Tile",
    "payload",
    "step_input_region",
]

Tile = NDArray[Any]
"""Part of a map (a region's values, batch x channels x rows x columns)."""
C = TypeVar("C")


def step_input_region(step: ProgramStep | TailRole) -> TileRegion:
    """The rectangle a step's (or the tail's) input pieces make up together."""
    return reduce(TileRegion.hull, (p.region for p in step.inputs))


@dataclass(frozen=True)
class Piece:
    """Rows ``region`` of the map at ``boundary``, from ``source``."""

    boundary: int
    region: TileRegion
    source: str


@dataclass(frozen=True)
class Slice:
    """Output ``features`` of the tail's first layer, from ``source``."""

    source: str
    features: Span


@dataclass(frozen=True)
class Go:
    """Behind a barrier: the orchestrator's go for the steps reading ``boundary``."""

    boundary: int


Key = Piece | Slice | Go
"""What an item waits for."""


def payload(message: RowsMessage | VectorMessage) -> Tile:
    return message.rows.array if isinstance(message, RowsMessage) else message.values.array


def _needs(item: WorkItem, final: int, barrier: bool = False) -> list[Key]:
    """What an item waits for: its pieces (and, behind a barrier, the go for its block)."""
    if isinstance(item, ProgramStep):
        go: list[Key] = [Go(item.block.start)] if barrier and item.block.start > 0 else []
        return [Piece(item.block.start, p.region, p.source) for p in item.inputs] + go
    if isinstance(item, TailRole):
        return [Piece(final, p.region, p.source) for p in item.inputs]
    return [Slice(s.source, s.features) for s in item.slices]


@dataclass(frozen=True)
class ReadyStep(Generic[C]):
    """A work item whose inputs are all here: ``tile`` is its input assembled (a block's
    input rectangle, the whole final map for the tail, the first layer's output to finish)."""

    request: str
    index: int
    item: WorkItem
    tile: Tile
    context: C  # what the device keeps with the program (its model and shapes)


@dataclass
class HeldProgram(Generic[C]):
    """One program on the device: what it has of its pieces, how far it got, what it is owed."""

    message: ProgramMessage
    shapes: Sequence[FeatureShape]
    context: C
    expires: Deadline
    """Its expiry, or the client's deadline if that is sooner: then everything of it goes."""
    ticket: int = 0
    pieces: dict[Key, Tile] = field(default_factory=dict)
    next: int = 0
    queued: bool = False
    running: int | None = None  # the item the worker took and has not finished
    owed: dict[str, int] = field(default_factory=dict)  # sender -> float32 bytes still to come

    @property
    def items(self) -> list[WorkItem]:
        return work_items(self.message.steps, self.message.tail, self.message.finish)

    @property
    def final(self) -> int:
        return len(self.shapes) - 1

    def wanted(self, key: Key) -> bool:
        """An item of ours not done yet names this piece and it is not here yet."""
        return key not in self.pieces and any(key in self.needs(item) for item in self.items[self.next :])

    def needs(self, item: WorkItem) -> list[Key]:
        return _needs(item, self.final, self.message.barrier)

    def owed_at_install(self) -> dict[str, int]:
        """Float32 bytes of the pieces each sender owes this program, none of them here yet
        (kept up to date as pieces arrive: the device asks for every rows message)."""
        owed: dict[str, int] = {}
        for key in {k for item in self.items for k in self.needs(item)}:
            if key in self.pieces or isinstance(key, Go):
                continue
            if isinstance(key, Piece):
                shape, region = self.shapes[min(key.boundary, self.final)], key.region
                owed[key.source] = owed.get(key.source, 0) + 4 * shape.channels * region.height * region.width
            else:
                owed[key.source] = owed.get(key.source, 0) + 4 * key.features.size
        return owed

    def ready(self) -> bool:
        items = self.items
        return self.next < len(items) and all(k in self.pieces for k in self.needs(items[self.next]))

    def assemble(self, item: WorkItem) -> Tile:
        """The item's input from its pieces (which leave the store)."""
        if isinstance(item, FinishRole):
            return np.concatenate([self.pieces.pop(Slice(s.source, s.features)) for s in item.slices], axis=1)
        region = step_input_region(item)
        boundary = item.block.start if isinstance(item, ProgramStep) else self.final
        tile = np.empty((1, self.shapes[boundary].channels, region.height, region.width), dtype=np.float32)
        for piece in item.inputs:
            rows, cols = piece.region.within(region)
            tile[:, :, rows, cols] = self.pieces.pop(Piece(boundary, piece.region, piece.source))
        self.pieces.pop(Go(boundary), None)
        return tile

    def progress(self) -> tuple[int, tuple[str, ...]]:
        """The first item not run, and the senders whose pieces it still lacks (a go behind
        a barrier counts as the orchestrator's; an item taken and not finished has its input)."""
        items = self.items
        if self.running is not None:
            return self.running, ()
        if self.next >= len(items):
            return len(items), ()
        missing = {k for k in self.needs(items[self.next]) if k not in self.pieces}
        return self.next, tuple(sorted({self.message.orchestrator if isinstance(k, Go) else k.source for k in missing}))

    def keep(self, index: int, output: Tile, device: str) -> None:
        """Keep what of item ``index``'s output this device's later items read (rows of a
        block's output, its own slice of the tail)."""
        items = self.items
        item = items[index]
        self.running = None
        later_needs = {k for later in items[index + 1 :] for k in self.needs(later)}
        if isinstance(item, ProgramStep):
            for key in later_needs:
                mine = isinstance(key, Piece) and (key.boundary, key.source) == (item.block.stop, device)
                if mine and isinstance(key, Piece) and item.out_region.contains(key.region):
                    rows, cols = key.region.within(item.out_region)
                    self.pieces[key] = output[:, :, rows, cols].copy()
        elif isinstance(item, TailRole) and item.features is not None:
            own = Slice(device, item.features)
            if own in later_needs:
                self.pieces[own] = output
