"""Any strategy's plan as every holder's work, and who held it up (pure).

A device gets one program: its tasks as steps in block order, each reading its pieces from
their holders and sending each part of its output to whoever reads it, then its part of
the tail. The orchestrator is a holder too: it stitches the tiles sent to it (the gathering
strategies' scatter and gather) and, once it holds a boundary whole, forwards the pieces
devices read from it, runs the blocks the plan keeps on it (DeepThings' gateway) and hands
out the pulled tiles that read it (DeepThings' work stealing). An attempt starts from a
boundary the orchestrator holds whole; each program carries its pieces of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.planner.plan import Plan, producers
from edgeci_mqtt.timeline import ORCHESTRATOR
from edgeci_mqtt.wire import FinishRole, ProgramStep, SliceFrom, StepInput, StepSend, TailRole, WorkItem, work_items

__all__ = ["Answer", "Compiled", "DeviceProgram", "Forward", "Logits", "blame", "compile_plan", "downstream_first"]


@dataclass(frozen=True)
class DeviceProgram:
    """A device's part of one request: block steps in order, its part of the tail, finishing it."""

    steps: tuple[ProgramStep, ...] = ()
    tail: TailRole | None = None
    finish: FinishRole | None = None
    prepare: TailRows | None = None
    """Tail weights to make when idle (a device with no other part gets none: no program)."""

    @property
    def items(self) -> list[WorkItem]:
        """Its items in the order the device runs them (the index a report names)."""
        return work_items(self.steps, self.tail, self.finish)


@dataclass(frozen=True)
class Forward:
    """Once the orchestrator holds ``boundary`` whole, it sends ``region`` of it to ``to``."""

    boundary: int
    region: TileRegion
    to: str


@dataclass(frozen=True)
class Logits:
    """The logits, from the device that finishes the tail."""

    sender: str


Answer = SliceFrom | Logits
"""What the orchestrator waits for to end a request whose tail is not its own alone: the
slices of the tail's first fully connected layer, or the logits."""


@dataclass(frozen=True)
class Compiled:
    """Every holder's work for one attempt of a plan, from boundary ``start`` on.

    By boundary: the tiles sent to the orchestrator, each with its sender ("" for a pulled
    tile: whoever ran it) (``collects``); once it is whole there, the pieces sent as rows
    (``forwards``) and the pulled tiles' steps handed out (``handouts``); behind a barrier,
    the devices with a step ending there (``barrier``) and reading it (``readers``).
    ``carried``, by device: the piece of the start boundary its program carries.
    """

    start: int
    final: int
    programs: Mapping[str, DeviceProgram]
    collects: Mapping[int, Mapping[TileRegion, str]] = field(default_factory=dict)
    carried: Mapping[str, Forward] = field(default_factory=dict)
    forwards: Mapping[int, tuple[Forward, ...]] = field(default_factory=dict)
    handouts: Mapping[int, tuple[ProgramStep, ...]] = field(default_factory=dict)
    local: Mapping[int, FusedBlock] = field(default_factory=dict)
    answer: frozenset[Answer] = frozenset()
    barrier: Mapping[int, frozenset[str]] = field(default_factory=dict)
    readers: Mapping[int, frozenset[str]] = field(default_factory=dict)

    @property
    def tail_here(self) -> bool:
        """The orchestrator runs the whole tail on the final map: nothing else ends the request."""
        return not self.answer


def _name(holder: str, orchestrator: str) -> str:
    return orchestrator if holder == ORCHESTRATOR else holder


def _sends(plan: Plan, start: int, orchestrator: str) -> dict[tuple[int, int], list[StepSend]]:
    """Where each static task's output goes, by (block index, task index)."""
    sends: dict[tuple[int, int], list[StepSend]] = {}
    for k, block_plan in enumerate(plan.blocks):
        if block_plan.block.start < start:
            continue
        for i, task in enumerate(block_plan.tasks):
            for piece in task.inputs:
                if piece.source in (ORCHESTRATOR, task.device):
                    continue
                made_by = producers(plan.blocks[k - 1] if k else None, piece)
                if len(made_by) != 1:
                    raise PlanningError(
                        f"piece {piece.region} of boundary {piece.boundary} is made by {len(made_by)} tasks"
                    )
                send, out = StepSend(piece.region, task.device), sends.setdefault((k - 1, made_by[0]), [])
                if send not in out:  # two steps of one block may read the same rows (planner/overlap.py)
                    out.append(send)
            if task.output == ORCHESTRATOR:
                sends.setdefault((k, i), []).append(StepSend(task.out_region, orchestrator))
    return sends


def _tail_roles(
    plan: Plan, sends: dict[tuple[int, int], list[StepSend]], orchestrator: str
) -> tuple[dict[str, TailRole], FinishRole | None, frozenset[Answer]]:
    """The tail off the orchestrator: every final tile goes to each device reading the tail,
    which runs the whole tail or its share of the first fully connected layer (sent to the
    finisher: the orchestrator, or a device); and what the orchestrator then waits for."""
    tail, last = plan.tail, len(plan.blocks) - 1
    if tail.on_orchestrator:
        return {}, None, frozenset()
    final = plan.blocks[last].tasks
    pieces = tuple(StepInput(t.out_region, _name(t.output, orchestrator)) for t in final)
    parts, roles = dict(tail.parts), {}
    for reader in tail.readers:
        for i, task in enumerate(final):
            if task.output != reader:
                sends.setdefault((last, i), []).append(StepSend(task.out_region, _name(reader, orchestrator)))
        to = _name(tail.finisher, orchestrator) if reader in parts else orchestrator
        roles[reader] = TailRole(pieces, to, parts.get(reader))
    if not tail.parts:
        return roles, None, frozenset({Logits(tail.finisher)})
    if tail.finisher == ORCHESTRATOR:
        return roles, None, frozenset(SliceFrom(d, s) for d, s in tail.parts)
    finish = FinishRole(tuple(SliceFrom(_name(d, orchestrator), s) for d, s in tail.parts), orchestrator)
    return roles, finish, frozenset({Logits(tail.finisher)})


def compile_plan(plan: Plan, orchestrator: str, start: int = 0) -> Compiled:
    """Every holder's work for ``plan`` from boundary ``start``. Raises :class:`PlanningError`
    if a piece is not made by exactly one task (plans cut pieces by producer), a static task
    has no device, or the orchestrator does not hold ``start`` whole."""
    final = plan.blocks[-1].block.stop if plan.blocks else 0
    if start and not any(b.block.stop == start and b.gathers for b in plan.blocks):
        raise PlanningError(f"the orchestrator does not hold boundary {start} whole: no attempt can start there")
    sends = _sends(plan, start, orchestrator)
    roles, finish, answer = _tail_roles(plan, sends, orchestrator)
    steps: dict[str, list[ProgramStep]] = {}
    collects: dict[int, dict[TileRegion, str]] = {}
    carried: dict[str, Forward] = {}
    forwards: dict[int, list[Forward]] = {}
    handouts: dict[int, list[ProgramStep]] = {}
    local: dict[int, FusedBlock] = {}
    barrier: dict[int, frozenset[str]] = {}
    readers: dict[int, frozenset[str]] = {}
    for k, block_plan in enumerate(plan.blocks):
        block = block_plan.block
        if block.start < start:
            continue
        if block_plan.placement == "orchestrator":
            local[block.start] = block
            continue
        if plan.barrier and block_plan.dispatch == "static":
            barrier[block.stop] = readers[block.start] = frozenset(block_plan.devices)
        for i, task in enumerate(block_plan.tasks):
            inputs = tuple(StepInput(p.region, _name(p.source, orchestrator)) for p in task.inputs)
            step = ProgramStep(block, task.out_region, inputs, tuple(sends.get((k, i), ())))
            if task.output == ORCHESTRATOR:
                collects.setdefault(block.stop, {})[task.out_region] = task.device
            if block_plan.dispatch == "pull":
                handouts.setdefault(block.start, []).append(step)
                continue
            if not task.device:
                raise PlanningError(f"block {block}: task {task.out_region} has no device to run on")
            steps.setdefault(task.device, []).append(step)
            for piece in task.inputs:
                if piece.source != ORCHESTRATOR:
                    continue
                forward = Forward(piece.boundary, piece.region, task.device)
                if piece.boundary == start and task.device not in carried:
                    carried[task.device] = forward
                else:
                    forwards.setdefault(piece.boundary, []).append(forward)
    barrier.pop(final, None)  # the end of the last block and the start of the first need no go-ahead
    readers.pop(start, None)
    tail = plan.tail
    devices = (set(steps) | set(roles) | ({tail.finisher} if finish else set())) - {ORCHESTRATOR}
    prepare = dict(tail.prepare)
    programs = {
        d: DeviceProgram(tuple(steps.get(d, ())), roles.get(d), finish if d == tail.finisher else None, prepare.get(d))
        for d in sorted(devices)
    }
    return Compiled(
        start=start,
        final=final,
        programs=programs,
        collects=collects,
        carried=carried,
        forwards={b: tuple(f) for b, f in forwards.items()},
        handouts={b: tuple(h) for b, h in handouts.items()},
        local=local,
        answer=answer,
        barrier=barrier,
        readers=readers,
    )


def downstream_first(programs: Mapping[str, DeviceProgram]) -> list[str]:
    """The devices in the order their programs should go out, the latest first step first
    (those with no step before all): a device then holds its program before the rows of its
    upstream neighbours, which start at once (rows that overtake it wait in a small area)."""
    return sorted(programs, key=lambda d: (-programs[d].steps[0].block.start if programs[d].steps else -(1 << 30), d))


def blame(work: Compiled, reports: Mapping[str, tuple[int, tuple[str, ...]]], orchestrator: str) -> set[str]:
    """Who held a late attempt up, from what each device said when it was released (the
    first item it had not run, -1 without a program, and the senders that item waited for).

    Those named are given up and held out of the next requests, so one that only waited
    for another must not be. A device that did not answer (stopped, quiet, or hostile) is
    to blame, and so is one that had every piece of its next item and had not finished it.
    One waiting is not, if its claim holds: the senders it names are ones its next item
    reads (the orchestrator only where it forwards rows to it, or says go behind a barrier).
    A claim on a sender that says it finished cannot be settled here (rows lost, or one of
    them lying): both are blamed, for a short hold. Nobody is blamed when every device
    finished: the lateness was the orchestrator's or the broker's."""
    programs = work.programs
    finished = {d for d, r in reports.items() if d in programs and r[0] >= len(programs[d].items)}
    forwarded = {f.to for forwards in work.forwards.values() for f in forwards}
    blamed = set()
    for device, program in programs.items():
        items, report = program.items, reports.get(device)
        if report is None or report[0] < 0:
            blamed.add(device)  # silent, or its program never reached it
            continue
        item, waiting_for = report
        if item >= len(items):
            continue
        next_item = items[item]
        reads = next_item.slices if isinstance(next_item, FinishRole) else next_item.inputs
        readable = {p.source for p in reads} - {device, orchestrator}
        if work.barrier or device in forwarded:
            readable.add(orchestrator)
        claims = set(waiting_for)
        if not claims or not claims <= readable:
            blamed.add(device)
        elif claims & finished:
            blamed |= {device, *(claims & finished)}
    return blamed
