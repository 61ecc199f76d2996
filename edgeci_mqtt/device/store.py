"""A device's programs and the rows they read, bounded and expiring (no I/O).

Keyed by request (a program's id). A program's items run in order; one is ready when
every input piece is here: rows the program carries, rows other holders sent (each a
piece an item names, from the holder it names: the topic proves the sender), and rows
this device computed itself. Pieces are keyed by what they are (:class:`Piece`,
:class:`Slice`, :class:`Go`), never told apart by their shape. Rows that overtook their
program wait in a holding area bounded in bytes and age; everything counts against one
byte budget; a request's data goes when it is released, expires or is done, and its id
is remembered a while so that its late rows are dropped, not held.

Thread-safe: the message loop adds programs and rows, the worker takes and completes
steps; a request is handed to one worker job at a time (``queued``), so a step is never
run twice nor a wake-up lost.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from edgeci_mqtt.core.deadline import Deadline
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion
from edgeci_mqtt.device.programs import ReadyStep, Tile, input_hull
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.wire import RowsMessage, VectorMessage, WorkItem, work_items
from edgeci_mqtt.wire.programs import FinishRole, ProgramMessage, ProgramStep, TailRole

__all__ = ["HOLDING_PER_SENDER", "HOLDING_S", "FlowStore", "Go", "HeldProgram", "Key", "Piece", "Slice", "payload"]

C = TypeVar("C")


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


@dataclass
class HeldProgram(Generic[C]):
    """One program on ``device``: what it has of its pieces (from the start, the rows it
    carries), how far it got, and what each sender still owes it."""

    message: ProgramMessage
    shapes: Sequence[FeatureShape]
    context: C
    expires: Deadline
    """Its expiry, or the client's deadline if that is sooner: then everything of it goes."""
    device: str
    ticket: int = 0
    pieces: dict[Key, Tile] = field(default_factory=dict)
    next: int = 0
    queued: bool = False
    running: int | None = None  # the item the worker took and has not finished
    owed: dict[str, int] = field(default_factory=dict)  # sender -> float32 bytes still to come
    items: list[WorkItem] = field(init=False)

    def __post_init__(self) -> None:
        message = self.message
        self.items = work_items(message.steps, message.tail, message.finish)
        if message.input is not None and message.input_region is not None:
            self.pieces[Piece(message.input_boundary, message.input_region, message.orchestrator)] = message.input
        for key in {k for item in self.items for k in self.needs(item)}:  # our own rows come from our steps
            if not isinstance(key, Go) and key not in self.pieces and key.source != self.device:
                self.owed[key.source] = self.owed.get(key.source, 0) + 4 * math.prod(self.shape(key))

    @property
    def final(self) -> int:
        return len(self.shapes) - 1

    def shape(self, key: Piece | Slice) -> tuple[int, ...]:
        """The shape of the float32 array a piece is."""
        if isinstance(key, Slice):
            return (1, key.features.size)
        return (1, self.shapes[min(key.boundary, self.final)].channels, key.region.height, key.region.width)

    def needs(self, item: WorkItem) -> list[Key]:
        """What an item waits for: its pieces (and, behind a barrier, the go for its block)."""
        if isinstance(item, ProgramStep):
            go: list[Key] = [Go(item.block.start)] if self.message.barrier and item.block.start > 0 else []
            return [Piece(item.block.start, p.region, p.source) for p in item.inputs] + go
        if isinstance(item, TailRole):
            return [Piece(self.final, p.region, p.source) for p in item.inputs]
        return [Slice(s.source, s.features) for s in item.slices]

    def wanted(self, key: Key) -> bool:
        """An item of ours not done yet names this piece and it is not here yet."""
        return key not in self.pieces and any(key in self.needs(item) for item in self.items[self.next :])

    def ready(self) -> bool:
        return self.next < len(self.items) and all(k in self.pieces for k in self.needs(self.items[self.next]))

    def assemble(self, item: WorkItem) -> Tile:
        """The item's input from its pieces (which leave the store, but for those a later
        item reads too: a block cut into several steps reads some rows in two of them)."""
        if isinstance(item, FinishRole):
            return np.concatenate([self.pieces.pop(Slice(s.source, s.features)) for s in item.slices], axis=1)
        later = {k for other in self.items[self.next :] for k in self.needs(other)}
        region = input_hull(item)
        boundary = item.block.start if isinstance(item, ProgramStep) else self.final
        tile = np.empty((1, self.shapes[boundary].channels, region.height, region.width), dtype=np.float32)
        for piece in item.inputs:
            rows, cols = piece.region.within(region)
            key = Piece(boundary, piece.region, piece.source)
            tile[:, :, rows, cols] = self.pieces[key] if key in later else self.pieces.pop(key)
        self.pieces.pop(Go(boundary), None)
        return tile

    def keep(self, index: int, output: Tile) -> None:
        """Keep what of item ``index``'s output our later items read (rows of a block's
        output, our own slice of the tail)."""
        item, self.running = self.items[index], None
        later_needs = {k for later in self.items[index + 1 :] for k in self.needs(later)}
        if isinstance(item, ProgramStep):
            for key in [k for k in later_needs if isinstance(k, Piece) and k.source == self.device]:
                if key.boundary == item.block.stop and item.out_region.contains(key.region):
                    rows, cols = key.region.within(item.out_region)
                    self.pieces[key] = output[:, :, rows, cols].copy()
        elif isinstance(item, TailRole) and item.features is not None:
            own = Slice(self.device, item.features)
            if own in later_needs:
                self.pieces[own] = output


BUDGET_BYTES = 512 << 20
DEFAULT_HOLDING_BYTES, HOLDING_PER_SENDER = 16 << 20, 4 << 20
"""Rows for requests whose program is not here yet: in all, and from one sender. Rows
overtake their program only when a neighbour's step ends before the orchestrator's
publish of ours reaches us (it sends programs downstream first), so a few halos; anything
beyond that is rows nobody asked for, which a device credential could otherwise send; one
sender's share keeps one credential from filling the area for the others."""
HOLDING_S = 5.0
"""How long rows wait for their program (it is milliseconds behind them when they overtake it)."""
REMEMBERED = 4096


class FlowStore(Generic[C]):
    """Programs and rows of the ``flow`` requests on one device; ``C`` is what the device
    keeps with each program and gets back with each ready step. ``on_ready(request, ticket)``
    hands a request to the worker (its next item is ready, or may be after the one just
    done); ``on_end(request)``: it ended here (done, released, expired, failed)."""

    def __init__(
        self,
        device: str,
        holding_bytes: int = DEFAULT_HOLDING_BYTES,
        on_ready: Callable[[str, int], None] = lambda request, ticket: None,
        on_end: Callable[[str], None] = lambda request: None,
    ) -> None:
        self.device, self.on_ready, self.on_end = device, on_ready, on_end
        self.budget_bytes, self.holding_bytes, self.holding_s = BUDGET_BYTES, holding_bytes, HOLDING_S
        self.holding_per_sender = min(HOLDING_PER_SENDER, holding_bytes)
        self._programs: dict[str, HeldProgram[C]] = {}
        self._held: list[tuple[float, str, str, RowsMessage | VectorMessage]] = []  # (arrived, request, sender, rows)
        self._ended: OrderedDict[str, tuple[str, int]] = OrderedDict()  # request -> (why, items run), latest last
        self._lock = threading.RLock()  # re-entrant: the public reads are also used under it
        self.counts = {"dropped_ended": 0, "dropped_unknown": 0, "refused": 0, "over_budget": 0}

    # ------------------------------------------------------------ accounting
    @property
    def stored_bytes(self) -> int:
        with self._lock:
            held = sum(payload(r).nbytes for _, _, _, r in self._held)
            return held + sum(a.nbytes for p in self._programs.values() for a in p.pieces.values())

    def requests(self) -> list[str]:
        with self._lock:
            return sorted(self._programs)

    def knows(self, request: str) -> bool:
        """The request's program is here or was (a second delivery of it changes nothing)."""
        with self._lock:
            return request in self._programs or request in self._ended

    def expects(self, request: str, sender: str) -> int | None:
        """Float32 bytes of rows ``request``'s program still waits for from ``sender``: 0 if
        none (or the request is over here), None if its program has not arrived."""
        with self._lock:
            if request in self._ended:
                return 0
            entry = self._programs.get(request)
            return None if entry is None else max(0, entry.owed.get(sender, 0))

    def ended(self, request: str) -> str | None:
        """Why the request is over here, or None."""
        with self._lock:
            return self._ended[request][0] if request in self._ended else None

    def progress(self, request: str) -> tuple[int, tuple[str, ...]] | None:
        """How far the request got here: the first item not run, and the senders whose pieces it
        still lacks (a go behind a barrier counts as the orchestrator's; an item taken and not
        finished has its input); ``(-1, ())`` if its program never came; None if it ended here
        other than done (whoever ended it knows why)."""
        with self._lock:
            entry = self._programs.get(request)
            if entry is None:
                why, run = self._ended.get(request, ("", -1))
                return (run, ()) if why in ("", "done") else None
            if entry.running is not None or entry.next >= len(entry.items):
                return (entry.next if entry.running is None else entry.running), ()
            missing = [k for k in entry.needs(entry.items[entry.next]) if k not in entry.pieces]
            senders = {entry.message.orchestrator if isinstance(k, Go) else k.source for k in missing}
            return entry.next, tuple(sorted(senders))

    def holding_room(self, sender: str) -> int:
        """Bytes more that rows from ``sender`` for requests whose program has not arrived may take."""
        with self._lock:
            held = sum(payload(h[3]).nbytes for h in self._held)
            own = sum(payload(h[3]).nbytes for h in self._held if h[2] == sender)
            room = min(self.budget_bytes - self.stored_bytes, self.holding_bytes - held, self.holding_per_sender - own)
            return max(0, room)

    def _end(self, request: str, why: str) -> None:
        entry = self._programs.pop(request, None)
        self._held = [h for h in self._held if h[1] != request]
        run = entry.next if entry is not None else self._ended.pop(request, ("", -1))[1]
        self._ended[request] = (why, run)  # the latest last
        while len(self._ended) > REMEMBERED:
            self._ended.popitem(last=False)
        self.on_end(request)

    # ------------------------------------------------------------ message loop
    def install(
        self, program: ProgramMessage, shapes: Sequence[FeatureShape], context: C, now: float, ticket: int = 0
    ) -> bool:
        """Accept a validated program (``ticket``: its place in the worker's queue); True if its first step is ready."""
        with self._lock:
            self.expire(now)
            request = program.request
            if self.knows(request):
                raise WireError(f"program {request}: this request was already given to {self.device}")
            until = Deadline.within(program.expires_s, now).sooner(Deadline.within(program.deadline_s, now))
            entry = HeldProgram(program, shapes, context, until, self.device, ticket)
            if self.stored_bytes + sum(a.nbytes for a in entry.pieces.values()) > self.budget_bytes:
                self.counts["over_budget"] += 1
                raise WireError(f"program {request}: no room for its rows on {self.device}")
            self._programs[request] = entry
            waiting = [h for h in self._held if h[1] == request]
            self._held = [h for h in self._held if h[1] != request]
            for _, _, sender, rows in waiting:  # validated against the program like any other rows
                with contextlib.suppress(WireError):  # counted by _add
                    self._add(rows, sender, now)
            return self._claim(request)

    def add_rows(self, rows: RowsMessage | VectorMessage, sender: str, now: float) -> bool:
        """Store rows (or a slice of the tail) from ``sender`` (the topic's sender id); True if
        they make the request's next item ready. :class:`WireError` on refusal."""
        with self._lock:
            self.expire(now)
            self._add(rows, sender, now)
            return self._claim(rows.request)

    def _add(self, message: RowsMessage | VectorMessage, sender: str, now: float) -> None:
        array, request = payload(message), message.request
        if request in self._ended:
            self.counts["dropped_ended"] += 1
            raise WireError(f"rows for request {request}, which is over here ({self._ended[request][0]})")
        entry = self._programs.get(request)
        if entry is None:
            if array.nbytes > self.holding_room(sender):
                self.counts["dropped_unknown"] += 1
                raise WireError(f"rows for unknown request {request}: the holding area is full")
            self._held.append((now, request, sender, message))
            return
        if isinstance(message, RowsMessage):
            key: Piece | Slice = Piece(message.boundary, message.region, sender)
        else:
            key = Slice(sender, message.features)
        if (isinstance(message, VectorMessage) and message.logits) or not entry.wanted(key):
            self.counts["refused"] += 1
            what = key.region if isinstance(key, Piece) else key.features
            raise WireError(f"request {request}: no step of {self.device} reads {what} from {sender}")
        if array.shape != (expected := entry.shape(key)) or array.dtype != np.float32:
            self.counts["refused"] += 1
            raise WireError(f"request {request}: rows are {array.dtype}{list(array.shape)}, not {expected}")
        if array.nbytes > self.budget_bytes - self.stored_bytes:
            self.counts["over_budget"] += 1
            raise WireError(f"request {request}: no room for {array.nbytes} bytes of rows")
        entry.pieces[key] = array
        entry.owed[sender] = entry.owed.get(sender, 0) - array.nbytes

    def go(self, request: str, boundary: int) -> bool:
        """The orchestrator's go for the steps reading ``boundary``; True if that makes the
        next step ready. A go nobody waits for is refused (:class:`WireError`)."""
        with self._lock:
            entry = self._programs.get(request)
            if entry is None or not entry.wanted(Go(boundary)):
                self.counts["refused"] += 1
                raise WireError(f"request {request}: no step of {self.device} waits for a go at {boundary}")
            entry.pieces[Go(boundary)] = np.zeros(0, dtype=np.float32)
            return self._claim(request)

    def _claim(self, request: str) -> bool:
        entry = self._programs.get(request)
        if entry is None or entry.queued or not entry.ready():
            return False
        entry.queued = True
        self.on_ready(request, entry.ticket)
        return True

    def release(self, request: str, why: str) -> bool:
        """Drop everything of ``request``; True if there was anything."""
        with self._lock:
            known = request in self._programs or any(h[1] == request for h in self._held)
            self._end(request, why)
            return known

    def expire(self, now: float) -> list[str]:
        """End the programs past their expiry and drop the held rows past ``holding_s``; the requests ended."""
        with self._lock:
            gone = [r for r, p in self._programs.items() if p.expires.passed(now)]
            for request in gone:
                self._end(request, "expired")
            kept = [h for h in self._held if now - h[0] <= self.holding_s]
            self.counts["dropped_unknown"] += len(self._held) - len(kept)
            self._held = kept
            return gone

    # ------------------------------------------------------------ worker
    def next_step(self, request: str, now: float) -> ReadyStep[C] | None:
        """The request's next work item with its input assembled (its pieces leave the
        store), or None, which also ends the worker's claim on the request. A request past
        its expiry or its client's deadline ends here instead: nobody waits for its work."""
        with self._lock:
            entry = self._programs.get(request)
            if entry is not None and entry.expires.passed(now):
                self._end(request, "expired")
            elif entry is not None and not entry.ready():
                entry.queued = False
            elif entry is not None:
                index = entry.running = entry.next
                entry.next += 1
                return ReadyStep(request, index, entry.items[index], entry.assemble(entry.items[index]), entry.context)
            return None

    def computed(self, request: str, index: int, output: Tile) -> None:
        """Keep what our later items read of an item's output; end the request after its last item."""
        with self._lock:
            entry = self._programs.get(request)
            if entry is None:
                return
            entry.keep(index, output)
            if entry.next >= len(entry.items):
                self._end(request, "done")
            else:  # still the worker's: its next job takes the next item, or lets the request go
                self.on_ready(request, entry.ticket)
