"""One attempt at one request, under any strategy, as a pure state machine:
``Attempt.handle(event) -> actions``, without a clock, I/O or torch; its edge stamps the
events and carries out the actions.

Work lost is redone from the last boundary the orchestrator holds whole. A pulled tile
whose device left, failed, sent a bad tile or stayed silent past its allowance goes back
to the queue for the next idle device (DeepThings' own recovery). A program whose device
left, failed or sent a bad tile ends the attempt: every device is released and the request
is re-planned without that device. Past the deadline every device is asked how far it got
as it is released, and :func:`~edgeci_mqtt.orchestrator.programs.blame` names whom to give up
from what they say within :data:`REPORTS_S`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from numpy.typing import NDArray

from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.orchestrator.actions import (
    Action,
    Compute,
    Fail,
    Finish,
    GiveUp,
    Go,
    Ignore,
    Keep,
    Release,
    Restart,
    SendProgram,
    SendRows,
)
from edgeci_mqtt.orchestrator.programs import Answer, Compiled, DeviceProgram, Forward, Logits, blame, downstream_first
from edgeci_mqtt.wire import (
    DoneMessage,
    FailureMessage,
    ProgramStep,
    ProgressMessage,
    RowsMessage,
    SliceFrom,
    VectorMessage,
)

__all__ = ["REPORTS_S", "Arrived", "Attempt", "Begin", "Computed", "Event", "Tick"]

OFFLINE = "went offline"
NO_DEVICE = "no capable device remains for this inference"
LATE = "the attempt ran past its deadline"
REPORTS_S = 0.5
"""How long a late attempt waits for its devices to say how far they got (a device answers
from its message thread, whatever its worker is doing)."""


# ---------------------------------------------------------------- events
@dataclass(frozen=True)
class Arrived:
    """A device's ``message`` about a program reached the orchestrator at ``now``: rows or a
    vector (its array's shape and type are checked here, once, against the plan), its
    failure, its step finished behind a barrier, or how far it got (asked when late)."""

    message: RowsMessage | VectorMessage | FailureMessage | DoneMessage | ProgressMessage
    now: float

    @property
    def sender(self) -> str:
        message = self.message
        return message.sender if isinstance(message, RowsMessage | VectorMessage) else message.device


@dataclass(frozen=True)
class Tick:
    """Time passed; ``online``: the devices online now (work on one that left is lost)."""

    now: float
    online: frozenset[str]


@dataclass(frozen=True)
class Begin(Tick):
    """The attempt begins: a tick on which every program goes out."""


@dataclass(frozen=True)
class Computed:
    """The orchestrator computed a block of its own: it holds ``boundary`` whole."""

    boundary: int
    now: float


Event = Arrived | Tick | Computed


# ---------------------------------------------------------------- the machine
@dataclass
class _Out:
    """A pulled tile handed out."""

    device: str
    step: ProgramStep
    deadline: float


def _mismatch(sender: str, array: NDArray[Any], want: tuple[int, ...], what: object) -> str:
    """Why what arrived is refused ("" if it is the float32 array of ``want``'s shape)."""
    if array.shape == want and str(array.dtype) == "float32":
        return ""
    return f"{sender} sent {array.dtype}{list(array.shape)} for {what}, expected float32{list(want)}"


@dataclass
class Attempt:
    """One attempt of a request: ``work`` (its holders' work), ``program`` (the id of its
    device programs), ``deadline`` (for every program; once late, for their reports),
    ``channels`` (of the map at each boundary) and ``classes`` (the logits' size), to check what arrives.
    ``allowance(step, device)``: how long a pulled tile may take on a device."""

    work: Compiled
    program: str
    orchestrator: str
    deadline: float
    channels: tuple[int, ...]
    classes: int
    allowance: Callable[[ProgramStep, str], float] = lambda step, device: 60.0
    failed: set[str] = field(default_factory=set)
    tiles: dict[int, set[TileRegion]] = field(default_factory=dict)
    answered: set[Answer] = field(default_factory=set)
    queue: deque[ProgramStep] = field(default_factory=deque)
    out: dict[str, _Out] = field(default_factory=dict)
    unfinished: dict[int, set[str]] = field(default_factory=dict)
    online: frozenset[str] = frozenset()
    """The devices online at the last event that said (idle ones take pulled tiles)."""
    recovered: int = 0
    restart_from: int = 0
    """The last boundary this attempt made whole here (where the next one may start)."""
    finished: bool = False
    over: bool = False
    late: bool = False
    reports: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)  # once late, as blame() reads
    _handed: int = 0

    def __post_init__(self) -> None:
        self.unfinished = {b: set(d) for b, d in self.work.barrier.items()}
        self.restart_from = self.work.start

    def handle(self, event: Event) -> list[Action]:
        if self.late and not self.over and not isinstance(event, Computed):
            return self._reported(event)
        if self.over or self.finished or self.late:
            return [Ignore(event.sender, "the attempt is over")] if isinstance(event, Arrived) else []
        if isinstance(event, Computed):
            return self._reached(event.boundary, event.now)
        if isinstance(event, Tick):
            return self._tick(event)
        message, now = event.message, event.now
        if isinstance(message, RowsMessage):
            return self._rows(message, now)
        if isinstance(message, VectorMessage):
            return self._vector(message)
        if isinstance(message, FailureMessage):
            return self._device_failed(message, now)
        if isinstance(message, DoneMessage):
            return self._step_finished(message)
        return [Ignore(message.device, "no progress is asked for now")]

    def _reached(self, boundary: int, now: float) -> list[Action]:
        """The orchestrator holds ``boundary`` whole: what reads it can go."""
        self.restart_from = max(self.restart_from, boundary)
        work = self.work
        if boundary == work.final and work.tail_here:
            self.finished = True
            return [Finish()]
        actions: list[Action] = [SendRows(self.program, f) for f in work.forwards.get(boundary, ())]
        if boundary in work.local:
            actions.append(Compute(work.local[boundary]))
        if boundary in work.handouts:
            self.queue.extend(work.handouts[boundary])
            actions += self._hand_out(now)
        return actions

    def _rows(self, message: RowsMessage, now: float) -> list[Action]:
        program, sender, boundary, region = message.request, message.sender, message.boundary, message.region
        expected = self.work.collects.get(boundary, {}).get(region)
        if expected is None or region in self.tiles.get(boundary, set()):
            return [Ignore(sender, f"{region} of boundary {boundary} is not awaited")]
        pulled = self.out.get(program) if expected == "" else None
        if expected == "" and (pulled is None or (pulled.device, pulled.step.out_region) != (sender, region)):
            return [Ignore(sender, f"{region} was not handed to {sender} as {program}")]
        if expected and (program, sender) != (self.program, expected):
            return [Ignore(sender, f"{region} is {expected}'s to send")]
        array = message.rows.array
        why = _mismatch(sender, array, (1, self.channels[boundary], region.height, region.width), region)
        if why:
            return self._drop(program, sender, why, now) if pulled else self._lose({sender}, why)
        self.tiles.setdefault(boundary, set()).add(region)
        actions: list[Action] = [Keep(sender, array, boundary, region)]
        if pulled is not None:
            del self.out[program]
        if len(self.tiles[boundary]) == len(self.work.collects[boundary]):
            actions += self._reached(boundary, now)
        elif pulled is not None:
            actions += self._hand_out(now)  # the sender is idle again
        return actions

    def _vector(self, message: VectorMessage) -> list[Action]:
        sender, features = message.sender, message.features
        key: Answer = Logits(sender) if message.logits else SliceFrom(sender, features)
        if message.request != self.program or key not in self.work.answer or key in self.answered:
            return [Ignore(sender, f"no {key} is awaited")]
        why = _mismatch(sender, message.values.array, (1, self.classes if message.logits else features.size), key)
        if why:
            return self._lose({sender}, why)
        self.answered.add(key)
        actions: list[Action] = [Keep(sender, message.values.array, answer=key)]
        if self.answered == set(self.work.answer):
            self.finished = True
            actions.append(Finish())
        return actions

    def _device_failed(self, message: FailureMessage, now: float) -> list[Action]:
        program, device = message.request, message.device
        pulled = self.out.get(program)
        if pulled is not None and pulled.device == device:
            return self._drop(program, device, message.error, now)
        if program == self.program and device in self.work.programs:
            return self._lose({device}, message.error)
        return [Ignore(device, f"{program} is not its program here")]

    def _step_finished(self, message: DoneMessage) -> list[Action]:
        waiting = self.unfinished.get(message.boundary)
        if message.request != self.program or waiting is None or message.device not in waiting:
            return []
        waiting.discard(message.device)
        if waiting:
            return []
        del self.unfinished[message.boundary]
        readers = tuple(sorted(self.work.readers.get(message.boundary, ())))
        return [Go(self.program, readers, message.boundary)] if readers else []

    def _tick(self, event: Tick) -> list[Action]:
        self.online = event.online
        gone = set(self.work.programs) - event.online
        if gone:  # work on them is lost (at the start: left since the plan was made, never sent there)
            return self._lose(gone, f"{', '.join(sorted(gone))} {OFFLINE}", gone=True)
        if isinstance(event, Begin):
            programs = self.work.programs
            sent = [
                SendProgram(self.program, d, programs[d], self.work.carried.get(d)) for d in downstream_first(programs)
            ]
            return [*sent, *self._reached(self.work.start, event.now)]
        actions: list[Action] = []
        for program, out in list(self.out.items()):
            if out.device not in event.online:
                actions += self._drop(program, out.device, OFFLINE, event.now, gone=True, hand=False)
            elif event.now > out.deadline:
                actions += self._drop(program, out.device, "silent past its deadline", event.now, hand=False)
        actions += self._hand_out(event.now)
        if event.now > self.deadline and self.work.programs and not any(isinstance(a, Fail) for a in actions):
            self.late, self.deadline = True, event.now + REPORTS_S
            return [*actions, Release(self._programs_out(), LATE, report=True)]
        return actions

    # ------------------------------------------------------------ pulled tiles
    def _hand_out(self, now: float) -> list[Action]:
        """Queued tiles to idle devices; :class:`Fail` if tiles wait and nobody can take them."""
        busy = {o.device for o in self.out.values()}
        actions: list[Action] = []
        for device in sorted(self.online - busy - self.failed):
            if not self.queue:
                break
            step = self.queue.popleft()
            self._handed += 1
            program = f"{self.program}-{self._handed}"
            self.out[program] = _Out(device, step, now + self.allowance(step, device))
            first, *rest = (Forward(step.block.start, piece.region, device) for piece in step.inputs)
            actions.append(SendProgram(program, device, DeviceProgram(steps=(step,)), first))
            actions += [SendRows(program, forward) for forward in rest]
        if self.queue and not self.out and not actions:
            self.over = True
            return [Fail(NO_DEVICE)]
        return actions

    def _drop(
        self, program: str, device: str, why: str, now: float, gone: bool = False, hand: bool = True
    ) -> list[Action]:
        """A pulled tile lost with its device: back to the front of the queue."""
        out = self.out.pop(program)
        self.queue.appendleft(out.step)
        self.failed.add(device)
        self.recovered += 1
        actions: list[Action] = [GiveUp(frozenset({device}), why, gone)]
        if not gone:
            actions.append(Release(((program, device),), why))
        return actions + (self._hand_out(now) if hand else [])

    # ------------------------------------------------------------ the attempt ends
    def _programs_out(self) -> tuple[tuple[str, str], ...]:
        static = tuple((self.program, d) for d in sorted(self.work.programs))
        return static + tuple((p, o.device) for p, o in sorted(self.out.items()))

    def _lose(self, devices: set[str], why: str, gone: bool = False) -> list[Action]:
        self.over = True
        self.failed |= devices
        return [
            Release(self._programs_out(), why),
            GiveUp(frozenset(devices), why, gone),
            Restart(self.restart_from, why),
        ]

    def _reported(self, event: Arrived | Tick) -> list[Action]:
        """Late: the devices' reports until each answered or :data:`REPORTS_S` passed, then the blame."""
        message = event.message if isinstance(event, Arrived) else None
        if isinstance(message, ProgressMessage) and message.request == self.program:
            self.reports[message.device] = (message.item, message.waiting_for)
        elif isinstance(event, Arrived):
            return [Ignore(event.sender, "the attempt is over")]
        if set(self.work.programs) - set(self.reports) and event.now <= self.deadline:
            return []
        self.over = True
        blamed = blame(self.work, self.reports, self.orchestrator)
        why = LATE if blamed else f"{LATE}, though every device says it finished"
        self.failed |= blamed
        actions: list[Action] = [GiveUp(frozenset(blamed), why)] if blamed else []
        return [*actions, Restart(self.restart_from, why, late=True)]
