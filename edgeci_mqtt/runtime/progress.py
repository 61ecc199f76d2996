"""The orchestrator's decisions for one block of one inference, as a pure state machine.

:meth:`BlockProgress.handle` takes one event (a result arrived, time passed, an
auction awarded rows) and returns the actions to take (send a task, stitch a tile,
re-auction rows, give up). No clock, no I/O, no tensors: the caller stamps events with
the time and the online devices, checks a result's tile against
:meth:`BlockProgress.expected` before reporting it, and carries out the actions, so
every decision is unit-tested event by event.

Recovery: a task is lost when its device went offline, reported an error or a bad tile,
or stayed silent past its deadline (an allowance derived from its own estimate). Its
device is not used again in this inference. A lost pulled task goes back to the front
of the queue for the next idle device; a lost static task's rows are re-auctioned
among the devices that remain. Late, duplicate and unknown results are ignored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.planner.plan import Task

__all__ = [
    "FAILED_ELSEWHERE",
    "OFFLINE",
    "Action",
    "Awarded",
    "BlockProgress",
    "Event",
    "Fail",
    "Ignore",
    "Lost",
    "Reauction",
    "ResultArrived",
    "Send",
    "Start",
    "Stitch",
    "Tick",
]

OFFLINE = "offline"
FAILED_ELSEWHERE = "its device failed another task"
"""Why a task is lost when nothing is wrong with the task itself (its device is gone, or
it failed another task of the request already)."""


# ---------------------------------------------------------------- events
@dataclass(frozen=True)
class Start:
    now: float
    online: tuple[str, ...]


@dataclass(frozen=True)
class ResultArrived:
    """A result for ``task`` from ``device``; ``problem`` is empty if its tile fits the task."""

    task: str
    device: str
    problem: str
    now: float


@dataclass(frozen=True)
class Tick:
    now: float
    online: tuple[str, ...]


@dataclass(frozen=True)
class Awarded:
    """The tasks a re-auction gave (each with its winning device)."""

    tasks: tuple[Task, ...]
    now: float


Event = Start | ResultArrived | Tick | Awarded


# ---------------------------------------------------------------- actions
@dataclass(frozen=True)
class Send:
    task_id: str
    task: Task
    device: str


@dataclass(frozen=True)
class Stitch:
    task_id: str
    task: Task
    device: str


@dataclass(frozen=True)
class Ignore:
    task_id: str
    device: str
    why: str


@dataclass(frozen=True)
class Lost:
    task_id: str
    device: str
    why: str


@dataclass(frozen=True)
class Reauction:
    """Auction these output rows (one item per row) with these columns among the devices left."""

    rows: Span
    cols: Span


@dataclass(frozen=True)
class Fail:
    reason: str


Action = Send | Stitch | Ignore | Lost | Reauction | Fail


@dataclass
class _Pending:
    task: Task
    device: str
    deadline: float


@dataclass
class BlockProgress:
    """One block's tasks until every output tile is stitched.

    ``allowance(task, device)`` is how long a device may take before its task is given
    up; ``failed`` is shared by the blocks of one inference (a device that failed once
    is not used again); ``prefix`` makes task ids unique across inferences.
    """

    tasks: tuple[Task, ...]
    pull: bool
    allowance: Callable[[Task, str], float]
    prefix: str
    failed: set[str] = field(default_factory=set)
    pending: dict[str, _Pending] = field(default_factory=dict)
    waiting: deque[Task] = field(default_factory=deque)
    recovered: int = 0
    _count: int = 0

    @property
    def done(self) -> bool:
        return not self.pending and not self.waiting

    def expected(self, task_id: str) -> tuple[Task, str] | None:
        """The task and device a result for ``task_id`` must match, if it is still awaited."""
        entry = self.pending.get(task_id)
        return None if entry is None else (entry.task, entry.device)

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, Start):
            return self._start(event)
        if isinstance(event, ResultArrived):
            return self._result(event)
        if isinstance(event, Tick):
            return self._tick(event)
        return [self._send(task, task.device, event.now) for task in event.tasks]

    def _send(self, task: Task, device: str, now: float) -> Send:
        self._count += 1
        task_id = f"{self.prefix}{self._count}"
        self.pending[task_id] = _Pending(task, device, now + self.allowance(task, device))
        return Send(task_id, task, device)

    def _idle(self, online: Iterable[str]) -> str | None:
        busy = {p.device for p in self.pending.values()}
        return next((d for d in online if d not in busy and d not in self.failed), None)

    def _start(self, event: Start) -> list[Action]:
        if not self.pull:
            actions: list[Action] = []
            for task in self.tasks:
                if task.device in event.online and task.device not in self.failed:
                    actions.append(self._send(task, task.device, event.now))
                else:  # its device left or failed since the plan was made: never send it there
                    self.recovered += 1
                    rows, cols = task.out_region.rows, task.out_region.cols
                    actions += [Lost("", task.device, "unavailable before it was sent"), Reauction(rows, cols)]
            return actions
        self.waiting.extend(self.tasks)
        actions = []
        for device in event.online:
            if self.waiting and device not in self.failed:
                actions.append(self._send(self.waiting.popleft(), device, event.now))
        return actions + self._stalled(event.online, event.now)

    def _result(self, event: ResultArrived) -> list[Action]:
        entry = self.pending.get(event.task)
        if entry is None:
            return [Ignore(event.task, event.device, "late or unknown")]
        if event.device != entry.device:
            return [Ignore(event.task, event.device, f"sent to {entry.device}")]
        del self.pending[event.task]
        if event.problem:
            return self._lose(event.task, entry, event.problem)
        actions: list[Action] = [Stitch(event.task, entry.task, entry.device)]
        if self.pull and self.waiting:
            actions.append(self._send(self.waiting.popleft(), event.device, event.now))
        return actions

    def _tick(self, event: Tick) -> list[Action]:
        online = set(event.online)
        actions: list[Action] = []
        for task_id, entry in list(self.pending.items()):
            if entry.device not in online:
                why = OFFLINE
            elif entry.device in self.failed:
                why = FAILED_ELSEWHERE
            elif event.now > entry.deadline:
                why = "silent past its deadline"
            else:
                continue
            del self.pending[task_id]
            actions += self._lose(task_id, entry, why)
        if self.pull:
            idle = self._idle(event.online)
            if idle is not None and self.waiting:
                actions.append(self._send(self.waiting.popleft(), idle, event.now))
            actions += self._stalled(event.online, event.now)
        return actions

    def _lose(self, task_id: str, entry: _Pending, why: str) -> list[Action]:
        """Give up ``entry`` (already out of ``pending``) and recover its tile."""
        self.failed.add(entry.device)
        self.recovered += 1
        if self.pull:
            self.waiting.appendleft(entry.task)  # the next idle device takes it
            return [Lost(task_id, entry.device, why)]
        return [Lost(task_id, entry.device, why), Reauction(entry.task.out_region.rows, entry.task.out_region.cols)]

    def _stalled(self, online: Iterable[str], now: float) -> list[Action]:
        """Pulled tiles wait but nothing runs: the next idle device takes one, or no device is left."""
        if not (self.waiting and not self.pending):
            return []
        idle = self._idle(online)
        if idle is None:
            return [Fail("no capable device remains for this inference")]
        return [self._send(self.waiting.popleft(), idle, now)]
