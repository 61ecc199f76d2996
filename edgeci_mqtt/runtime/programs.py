"""A ``flow`` plan as one program per device (pure: plan in, wire steps out).

Each task of the plan becomes a step on its device. A step's inputs are the task's
pieces, with the orchestrator named by its real id; its sends are derived from who
reads its output: every piece of a next-block task that the step produced goes to that
task's device (nothing is sent to itself: a device reads its own rows from its store),
and a last-block step sends its whole tile to the orchestrator, where the tail runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.planner.environment import TailRows
from edgeci_mqtt.planner.plan import Plan, producers
from edgeci_mqtt.timeline import ORCHESTRATOR
from edgeci_mqtt.wire import FinishRole, ProgramStep, SliceFrom, StepInput, StepSend, TailRole

__all__ = ["DeviceProgram", "device_programs"]


@dataclass(frozen=True)
class DeviceProgram:
    """A device's part of one request: block steps in order, its part of the tail, finishing it."""

    steps: tuple[ProgramStep, ...] = ()
    tail: TailRole | None = None
    finish: FinishRole | None = None
    prepare: TailRows | None = None
    """Tail weights to make when idle (a device with no other part gets none: no program)."""


def device_programs(plan: Plan, orchestrator: str) -> dict[str, DeviceProgram]:
    """Every device's program. Raises :class:`PlanningError` if a piece is not made by
    exactly one task (a flow plan cuts pieces by producer) or a task has no device.

    A tail off the orchestrator: every final tile goes to each device reading the tail
    (unless it holds it), which runs the whole tail and answers, or its share of the first
    fully connected layer, sent to the finisher (the orchestrator, or a device that runs
    the rest and answers)."""

    def name(holder: str) -> str:
        return orchestrator if holder == ORCHESTRATOR else holder

    sends: dict[tuple[int, int], list[StepSend]] = {}
    for k, block_plan in enumerate(plan.blocks):
        for i, task in enumerate(block_plan.tasks):
            if not task.device:
                raise PlanningError(f"block {block_plan.block}: task {task.out_region} has no device to run on")
            for piece in task.inputs:
                if piece.source in (ORCHESTRATOR, task.device):
                    continue
                made_by = producers(plan.blocks[k - 1] if k else None, piece)
                if len(made_by) != 1:
                    raise PlanningError(
                        f"piece {piece.region} of boundary {piece.boundary} is made by {len(made_by)} tasks"
                    )
                sends.setdefault((k - 1, made_by[0]), []).append(StepSend(piece.region, task.device))
            if task.output == ORCHESTRATOR:
                sends.setdefault((k, i), []).append(StepSend(task.out_region, orchestrator))
    tail, last = plan.tail, len(plan.blocks) - 1
    roles: dict[str, TailRole] = {}
    if not tail.on_orchestrator:
        final = plan.blocks[last].tasks
        for reader in tail.readers:
            for i, task in enumerate(final):
                if task.output != reader:
                    sends.setdefault((last, i), []).append(StepSend(task.out_region, name(reader)))
        pieces = tuple(StepInput(t.out_region, name(t.output)) for t in final)
        parts = dict(tail.parts)
        for reader in tail.readers:
            features = parts.get(reader)
            roles[reader] = TailRole(pieces, name(tail.finisher) if features is not None else orchestrator, features)
    steps: dict[str, list[ProgramStep]] = {}
    for k, block_plan in enumerate(plan.blocks):
        for i, task in enumerate(block_plan.tasks):
            inputs = tuple(StepInput(p.region, name(p.source)) for p in task.inputs)
            step = ProgramStep(block_plan.block, task.out_region, inputs, tuple(sends.get((k, i), ())))
            steps.setdefault(task.device, []).append(step)
    finish = None
    if tail.parts and tail.finisher != ORCHESTRATOR:
        finish = FinishRole(tuple(SliceFrom(name(d), s) for d, s in tail.parts), orchestrator)
    devices = (set(steps) | set(roles) | ({tail.finisher} if finish else set())) - {ORCHESTRATOR}
    prepare = dict(tail.prepare)
    return {
        d: DeviceProgram(tuple(steps.get(d, ())), roles.get(d), finish if d == tail.finisher else None, prepare.get(d))
        for d in sorted(devices)
    }
