"""One attempt at one request, under any strategy, as a pure state machine:
``Attempt.handle(event) -> actions``, without a clock, I/O or torch. Its edge
(:class:`~edgeci_mqtt.orchestrator.attempt_edge.AttemptEdge`) stamps the events and carries
out the actions in order; :class:`Restart`, :class:`Finish` and :class:`Fail` end it.

Work lost is redone from the last boundary the orchestrator holds whole. A pulled tile
whose device left, failed, sent a bad tile or stayed silent past its allowance goes back
to the queue for the next idle device (DeepThings' own recovery). A program whose device
left, failed or sent a bad tile ends the attempt: every device is released and the request
is re-planned without that device. Past the attempt's deadline every device is asked how
far it got as it is released, and :func:`~edgeci_mqtt.orchestrator.programs.blame` names
whom to give up before the restart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edgeci_mqtt.core.geometry import Span, TileRegion
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
from edgeci_mqtt.orchestrator.programs import (
    Answer,
    Compiled,
    DeviceProgram,
    Forward,
    Logits,
    blame,
    downstream_first,
)
from edgeci_mqtt.wire import ProgramStep, SliceFrom

__all__ = [
    "Attempt",
    "Begin",
    "Computed",
    "DeviceFailed",
    "Event",
    "Reported",
    "StepFinished",
    "Tick",
    "TileArrived",
    "VectorArrived",
]

OFFLINE = "went offline"
NO_DEVICE = "no capable device remains for this inference"
LATE = "the attempt ran past its deadline"


# ---------------------------------------------------------------- events
@dataclass(frozen=True)
class TileArrived:
    """Rows ``region`` of the map at ``boundary`` from ``sender`` for ``program``: an array of
    ``shape`` and ``dtype``, checked here against what the plan says (the edge keeps it)."""

    program: str
    sender: str
    boundary: int
    region: TileRegion
    shape: tuple[int, ...]
    dtype: str
    now: float


@dataclass(frozen=True)
class VectorArrived:
    """A slice ``features`` of the tail's first layer, or the logits, from ``sender``."""

    program: str
    sender: str
    features: Span
    logits: bool
    shape: tuple[int, ...]
    dtype: str
    now: float


@dataclass(frozen=True)
class DeviceFailed:
    program: str
    device: str
    why: str
    now: float


@dataclass(frozen=True)
class StepFinished:
    """Behind a barrier: ``device`` finished its step ending at ``boundary``."""

    program: str
    device: str
    boundary: int


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


@dataclass(frozen=True)
class Reported:
    """What the devices of a late attempt said as they were released, by device: the first
    item they had not run (-1: no program) and the senders that item still waited for."""

    reports: Mapping[str, tuple[int, tuple[str, ...]]]


Event = Begin | TileArrived | VectorArrived | DeviceFailed | StepFinished | Tick | Computed | Reported


# ---------------------------------------------------------------- the machine
@dataclass
class _Out:
    """A pulled tile handed out."""

    device: str
    step: ProgramStep
    deadline: float


def _mismatch(event: TileArrived | VectorArrived, want: tuple[int, ...], what: object) -> str:
    """Why what arrived is refused ("" if it is the float32 array of ``want``'s shape)."""
    if event.shape == want and event.dtype == "float32":
        return ""
    return f"{event.sender} sent {event.dtype}{list(event.shape)} for {what}, expected float32{list(want)}"


@dataclass
class Attempt:
    """One attempt of a request: ``work`` (its holders' work), ``program`` (the id of its
    device programs), ``deadline`` (for every program), ``channels`` (of the map at each
    boundary) and ``classes`` (the logits' size), to check what arrives.
    ``allowance(step, device)``: how long a pulled tile may take on a device."""

    work: Compiled
    program: str
    orchestrator: str
    deadline: float
    channels: tuple[int, ...]
    classes: int
    allowance: Callable[[ProgramStep, str], float] = lambda step, device: 60.0
    failed: set[str] = field(default_factory=set)
    whole: set[int] = field(default_factory=set)
    tiles: dict[int, set[TileRegion]] = field(default_factory=dict)
    answered: set[Answer] = field(default_factory=set)
    queue: deque[ProgramStep] = field(default_factory=deque)
    out: dict[str, _Out] = field(default_factory=dict)
    unfinished: dict[int, set[str]] = field(default_factory=dict)
    online: frozenset[str] = frozenset()
    """The devices online at the last event that said (idle ones take pulled tiles)."""
    recovered: int = 0
    finished: bool = False
    over: bool = False
    late: bool = False
    _handed: int = 0

    def __post_init__(self) -> None:
        self.unfinished = {b: set(d) for b, d in self.work.barrier.items()}

    @property
    def restart_from(self) -> int:
        """The last boundary this attempt made whole here (where the next one may start)."""
        return max(self.whole, default=self.work.start)

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, Reported):
            return self._reported(event) if self.late and not self.over else []
        if self.over or self.finished or self.late:
            sender = getattr(event, "sender", getattr(event, "device", ""))
            return [Ignore(sender, "the attempt is over")] if sender else []
        if isinstance(event, TileArrived):
            return self._tile(event)
        if isinstance(event, VectorArrived):
            return self._vector(event)
        if isinstance(event, DeviceFailed):
            return self._device_failed(event)
        if isinstance(event, StepFinished):
            return self._step_finished(event)
        if isinstance(event, Computed):
            return self._reached(event.boundary, event.now)
        return self._tick(event)

    def _reached(self, boundary: int, now: float) -> list[Action]:
        """The orchestrator holds ``boundary`` whole: what reads it can go."""
        self.whole.add(boundary)
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

    def _tile(self, event: TileArrived) -> list[Action]:
        sender, boundary, region = event.sender, event.boundary, event.region
        expected = self.work.collects.get(boundary, {}).get(region)
        if expected is None or region in self.tiles.get(boundary, set()):
            return [Ignore(sender, f"{region} of boundary {boundary} is not awaited")]
        pulled = self.out.get(event.program) if expected == "" else None
        if expected == "" and (pulled is None or (pulled.device, pulled.step.out_region) != (sender, region)):
            return [Ignore(sender, f"{region} was not handed to {sender} as {event.program}")]
        if expected and (event.program, sender) != (self.program, expected):
            return [Ignore(sender, f"{region} is {expected}'s to send")]
        why = _mismatch(event, (1, self.channels[boundary], region.height, region.width), region)
        if why:
            return self._drop(event.program, sender, why, event.now) if pulled else self._lose({sender}, why)
        self.tiles.setdefault(boundary, set()).add(region)
        actions: list[Action] = [Keep(sender, boundary, region)]
        if pulled is not None:
            del self.out[event.program]
        if len(self.tiles[boundary]) == len(self.work.collects[boundary]):
            actions += self._reached(boundary, event.now)
        elif pulled is not None:
            actions += self._hand_out(event.now)  # the sender is idle again
        return actions

    def _vector(self, event: VectorArrived) -> list[Action]:
        key: Answer = Logits(event.sender) if event.logits else SliceFrom(event.sender, event.features)
        if event.program != self.program or key not in self.work.answer or key in self.answered:
            return [Ignore(event.sender, f"no {key} is awaited")]
        why = _mismatch(event, (1, self.classes if event.logits else event.features.size), key)
        if why:
            return self._lose({event.sender}, why)
        self.answered.add(key)
        actions: list[Action] = [Keep(event.sender, answer=key)]
        if self.answered == set(self.work.answer):
            self.finished = True
            actions.append(Finish())
        return actions

    def _device_failed(self, event: DeviceFailed) -> list[Action]:
        pulled = self.out.get(event.program)
        if pulled is not None and pulled.device == event.device:
            return self._drop(event.program, event.device, event.why, event.now)
        if event.program == self.program and event.device in self.work.programs:
            return self._lose({event.device}, event.why)
        return [Ignore(event.device, f"{event.program} is not its program here")]

    def _step_finished(self, event: StepFinished) -> list[Action]:
        waiting = self.unfinished.get(event.boundary)
        if event.program != self.program or waiting is None or event.device not in waiting:
            return []
        waiting.discard(event.device)
        if waiting:
            return []
        del self.unfinished[event.boundary]
        readers = tuple(sorted(self.work.readers.get(event.boundary, ())))
        return [Go(self.program, readers, event.boundary)] if readers else []

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
            self.late = True
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

    def _reported(self, event: Reported) -> list[Action]:
        self.over = True
        blamed = blame(self.work, event.reports, self.orchestrator)
        why = LATE if blamed else f"{LATE}, though every device says it finished"
        self.failed |= blamed
        actions: list[Action] = [GiveUp(frozenset(blamed), why)] if blamed else []
        return [*actions, Restart(self.restart_from, why, late=True)]
