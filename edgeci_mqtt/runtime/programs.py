"""A ``flow`` plan as one program per device (pure: plan in, wire steps out).

Each task of the plan becomes a step on its device. A step's inputs are the task's
pieces, with the orchestrator named by its real id; its sends are derived from who
reads its output: every piece of a next-block task that the step produced goes to that
task's device (nothing is sent to itself: a device reads its own rows from its store),
and a last-block step sends its whole tile to the orchestrator, where the tail runs.
"""

from __future__ import annotations

from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.planner.plan import Plan, producers
from edgeci_mqtt.timeline import ORCHESTRATOR
from edgeci_mqtt.wire import ProgramStep, StepInput, StepSend

__all__ = ["device_programs"]


def device_programs(plan: Plan, orchestrator: str) -> dict[str, tuple[ProgramStep, ...]]:
    """Every device's steps, in block order. Raises :class:`PlanningError` if a piece is
    not made by exactly one task (a flow plan cuts pieces by producer) or a task has no device."""
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
    programs: dict[str, list[ProgramStep]] = {}
    for k, block_plan in enumerate(plan.blocks):
        for i, task in enumerate(block_plan.tasks):
            inputs = tuple(
                StepInput(p.region, orchestrator if p.source == ORCHESTRATOR else p.source) for p in task.inputs
            )
            step = ProgramStep(block_plan.block, task.out_region, inputs, tuple(sends.get((k, i), ())))
            programs.setdefault(task.device, []).append(step)
    return {device: tuple(steps) for device, steps in programs.items()}
