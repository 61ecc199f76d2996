"""The replay of a plan's tail: on the orchestrator once it holds the final map, or off it
(:attr:`~edgeci_mqtt.planner.plan.Plan.tail`): every final tile travels to each of the
tail's readers, which run their part; their slices go to the finisher; the logits come back.
"""

from __future__ import annotations

from functools import partial

from edgeci_mqtt.planner.plan import Plan, Task
from edgeci_mqtt.planner.tail import LOGITS_BYTES, TailWork
from edgeci_mqtt.sim.messages import Messages
from edgeci_mqtt.sim.state import NO_TILE, Tile
from edgeci_mqtt.timeline import ORCHESTRATOR

__all__ = ["TailReplay"]


class TailReplay:
    """The tail of one replay; :attr:`end` is when the answer leaves the orchestrator."""

    def __init__(self, messages: Messages, plan: Plan) -> None:
        self.messages, self.state, self.plan = messages, messages.state, plan
        self.tail = plan.tail
        self.work = TailWork.of(plan.tail_work) if not plan.tail.on_orchestrator else None
        last = plan.blocks[-1].tasks if plan.blocks else ()
        self.missing = dict.fromkeys(plan.tail.readers, len(last))  # final tiles not yet with each reader
        self.slices_missing = len(plan.tail.parts)
        self.final = plan.blocks[-1].block.stop if plan.blocks else 0
        self.end: float | None = None

    def gathered(self, t: float) -> None:
        """The orchestrator holds the final map from ``t``: it runs the tail."""
        seconds = self.state.env.orchestrator.work_seconds(self.plan.tail_work)
        self.answered(self.state.busy(ORCHESTRATOR, "tail", t, seconds))

    def final_tile(self, task: Task, tile: Tile, t: float) -> None:
        """A final tile is ready on its device: it goes to every reader of a tail off the orchestrator."""
        if self.work is None:
            return
        for reader in self.tail.readers:
            then = partial(self.reader_input, reader)
            self.messages.send(task.output, reader, t, task.out_bytes, tile, then, self.final)

    def reader_input(self, reader: str, t: float) -> None:
        assert self.work is not None
        self.missing[reader] -= 1
        if self.missing[reader]:
            return
        work = self.work
        span = dict(self.tail.parts).get(reader)
        ops = work.part(span) if span is not None else (*work.head, work.first, *work.rest)
        end = self.state.busy(reader, "tail", t, self.messages.profile(reader).work_seconds(ops))
        if span is None:
            self.messages.send(reader, ORCHESTRATOR, end, LOGITS_BYTES, NO_TILE, self.answered)
        else:
            self.messages.send(reader, self.tail.finisher, end, work.slice_bytes(span), NO_TILE, self.slice_input)

    def slice_input(self, t: float) -> None:
        assert self.work is not None
        self.slices_missing -= 1
        if not self.slices_missing:
            finisher = self.tail.finisher
            end = self.state.busy(finisher, "tail", t, self.messages.profile(finisher).work_seconds(self.work.rest))
            self.messages.send(finisher, ORCHESTRATOR, end, LOGITS_BYTES, NO_TILE, self.answered)

    def answered(self, t: float) -> None:
        """The logits are on the orchestrator at ``t``: its answer goes out (a message)."""
        self.end = self.state.busy(ORCHESTRATOR, "answer", t, self.messages.message_cpu(ORCHESTRATOR))
