"""A device's programs and the rows they read, bounded and expiring (no I/O).

Keyed by request (a program's id). A program's steps run in order; a step is ready when
every input piece is here: rows the program carries, rows other holders sent (each must
be a piece a step names, from the holder the step names: the topic proves the sender),
and rows this device computed itself. Rows that arrive before their program wait in a
holding area bounded in bytes and age. Everything is counted against one byte budget;
a request's data goes when it is released, expires, or its last step is done, and its
id is remembered for a while so that its late rows are dropped, not held.

Thread-safe: the message loop adds programs and rows, the worker takes and completes
steps. :meth:`add_rows` and :meth:`next_step` hand a request to exactly one worker job
at a time (``queued``), so a step is never run twice nor a wake-up lost.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Generic, TypeVar

import numpy as np

from edgeci_mqtt.core.deadline import Deadline
from edgeci_mqtt.core.geometry import FeatureShape
from edgeci_mqtt.device.program_state import Go, HeldProgram, Key, Piece, ReadyStep, Slice, Tile, payload
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.wire import ProgramMessage, RowsMessage, VectorMessage

__all__ = ["FlowStore"]

C = TypeVar("C")

DEFAULT_BUDGET_BYTES = 512 << 20
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
    keeps with each program and gets back with each ready step."""

    def __init__(
        self,
        device: str,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        holding_bytes: int = DEFAULT_HOLDING_BYTES,
        holding_s: float = HOLDING_S,
        holding_per_sender: int = HOLDING_PER_SENDER,
    ) -> None:
        self.device = device
        self.budget_bytes, self.holding_bytes, self.holding_s = budget_bytes, holding_bytes, holding_s
        self.holding_per_sender = min(holding_per_sender, holding_bytes)
        self._programs: dict[str, HeldProgram[C]] = {}
        self._held: list[tuple[float, str, str, RowsMessage | VectorMessage]] = []  # (arrived, request, sender, rows)
        self._ended: OrderedDict[str, tuple[str, int]] = OrderedDict()  # request -> (why, items run), latest last
        self._lock = threading.Lock()
        self.counts = {"dropped_ended": 0, "dropped_unknown": 0, "refused": 0, "over_budget": 0}

    # ------------------------------------------------------------ accounting
    @property
    def stored_bytes(self) -> int:
        with self._lock:
            return self._bytes()

    def _bytes(self) -> int:
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
            ended = self._ended.get(request)
            return None if ended is None else ended[0]

    def progress(self, request: str) -> tuple[int, tuple[str, ...]] | None:
        """How far the request got here: the first item not run and the senders whose pieces
        it still lacks (a go behind a barrier counts as the orchestrator's); ``(-1, ())`` if
        its program never came; None if it ended here other than done (released, expired,
        failed: whoever ended it knows why)."""
        with self._lock:
            entry = self._programs.get(request)
            if entry is None:
                why, run = self._ended.get(request, ("", -1))
                return (run, ()) if why in ("", "done") else None
            return entry.progress()

    def holding_room(self, sender: str) -> int:
        """Bytes more that rows from ``sender`` for requests whose program has not arrived may take."""
        with self._lock:
            return self._holding_room(sender)

    def _holding_room(self, sender: str) -> int:
        held = sum(payload(h[3]).nbytes for h in self._held)
        own = sum(payload(h[3]).nbytes for h in self._held if h[2] == sender)
        room = min(self.budget_bytes - self._bytes(), self.holding_bytes - held, self.holding_per_sender - own)
        return max(0, room)

    def _end(self, request: str, why: str) -> None:
        entry = self._programs.pop(request, None)
        self._held = [h for h in self._held if h[1] != request]
        run = entry.next if entry is not None else self._ended.get(request, ("", -1))[1]
        self._ended[request] = (why, run)
        self._ended.move_to_end(request)
        while len(self._ended) > REMEMBERED:
            self._ended.popitem(last=False)

    # ------------------------------------------------------------ message loop
    def install(
        self, program: ProgramMessage, shapes: Sequence[FeatureShape], context: C, now: float, ticket: int = 0
    ) -> bool:
        """Accept a validated program; True if its first step is ready (hand it to the worker).
        ``ticket``: its place in the worker's queue (:meth:`ticket`)."""
        with self._lock:
            self._expire(now)
            request = program.request
            if request in self._programs or request in self._ended:
                raise WireError(f"program {request}: this request was already given to {self.device}")
            until = Deadline.within(program.expires_s, now).sooner(Deadline.within(program.deadline_s, now))
            entry = HeldProgram(program, shapes, context, until, ticket)
            if program.input is not None and program.input_region is not None:
                carried = Piece(program.input_boundary, program.input_region, program.orchestrator)
                entry.pieces[carried] = program.input
            entry.owed = entry.owed_at_install()
            entry.owed.pop(self.device, None)  # its own rows come from its own steps, not the wire
            if self._bytes() + sum(a.nbytes for a in entry.pieces.values()) > self.budget_bytes:
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
        they make the request's next item ready (hand it to the worker). Raises
        :class:`WireError` on refusal."""
        self._add(rows, sender, now)
        return self._claim(rows.request)

    def _add(self, message: RowsMessage | VectorMessage, sender: str, now: float) -> None:
        array = payload(message)
        with self._lock:
            self._expire(now)
            request = message.request
            if request in self._ended:
                self.counts["dropped_ended"] += 1
                raise WireError(f"rows for request {request}, which is over here ({self._ended[request][0]})")
            entry = self._programs.get(request)
            room = self.budget_bytes - self._bytes()
            if entry is None:
                if array.nbytes > self._holding_room(sender):
                    self.counts["dropped_unknown"] += 1
                    raise WireError(f"rows for unknown request {request}: the holding area is full")
                self._held.append((now, request, sender, message))
                return
            if isinstance(message, RowsMessage):
                key: Key = Piece(message.boundary, message.region, sender)
                shape = entry.shapes[min(message.boundary, entry.final)]
                expected: tuple[int, ...] = (1, shape.channels, message.region.height, message.region.width)
            else:
                key, expected = Slice(sender, message.features), (1, message.features.size)
            if (isinstance(message, VectorMessage) and message.logits) or not entry.wanted(key):
                self.counts["refused"] += 1
                what = key.region if isinstance(key, Piece) else key.features if isinstance(key, Slice) else ""
                raise WireError(f"request {request}: no step of {self.device} reads {what} from {sender}")
            if array.shape != expected or array.dtype != np.float32:
                self.counts["refused"] += 1
                raise WireError(f"request {request}: rows are {array.dtype}{list(array.shape)}, not {expected}")
            if array.nbytes > room:
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

    def ticket(self, request: str) -> int | None:
        """The ticket the request's program was installed with (None: not here)."""
        with self._lock:
            entry = self._programs.get(request)
            return None if entry is None else entry.ticket

    def _claim(self, request: str) -> bool:
        with self._lock:
            entry = self._programs.get(request)
            if entry is None or entry.queued or not entry.ready():
                return False
            entry.queued = True
            return True

    def release(self, request: str, why: str) -> bool:
        """Drop everything of ``request``; True if there was anything."""
        with self._lock:
            known = request in self._programs or any(h[1] == request for h in self._held)
            self._end(request, why)
            return known

    def expire(self, now: float) -> list[str]:
        with self._lock:
            return self._expire(now)

    def _expire(self, now: float) -> list[str]:
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
                return None
            if entry is None:
                return None
            if not entry.ready():
                entry.queued = False
                return None
            index = entry.next
            item = entry.items[index]
            entry.next, entry.running = index + 1, index
            return ReadyStep(request, index, item, entry.assemble(item), entry.context)

    def computed(self, request: str, index: int, output: Tile) -> None:
        """Keep what of an item's output this device's later items read (rows of a block's
        output, its own slice of the tail); end the request here after its last item."""
        with self._lock:
            entry = self._programs.get(request)
            if entry is None:
                return
            entry.keep(index, output, self.device)
            if entry.next >= len(entry.items):
                self._end(request, "done")
