"""Discrete-event replay of a plan on a cluster: a star through one broker.

The network model (links, the broker host) is :mod:`edgeci_mqtt.sim.state`'s, messages
are timed by :mod:`edgeci_mqtt.sim.messages`, an auctioned plan's rounds by
:mod:`edgeci_mqtt.sim.auction` and the tail by :mod:`edgeci_mqtt.sim.tail`; this module
replays the blocks' tasks.

Compute model. Each device runs one task at a time in arrival order, for the time its
profile prices the task's ops. The orchestrator is one CPU too (its cluster share): it
prepares every input piece it sends (copying the rows), stitches every result into the
block's output, runs blocks placed on it (DeepThings' gateway layers) and the tail.

Data dependencies. The plan is a task graph (:mod:`edgeci_mqtt.planner.plan`) and a task
runs as soon as all its input pieces are on its device. A piece from the orchestrator
is sent once the orchestrator holds the block's whole input map, i.e. once the previous
block is fully stitched (a gather strategy's barrier is just that dependency). A piece
held by a device is ready once the tasks that make it have finished there, and then
travels device -> broker -> device (:meth:`~edgeci_mqtt.sim.messages.Messages.forward`).
Assembling pieces on a device costs nothing here. A tile kept on another device than the
one computing it travels the same way.

Dispatch. ``static`` tasks are sent in plan order as their inputs become ready;
``pull`` blocks keep tiles in a queue on the orchestrator and send the next one to
whichever device asks (its previous result carries the request), as DeepThings' work
stealing does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.core.stages import BYTES_PER_ELEMENT
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.planner.costs import intake_seconds
from edgeci_mqtt.planner.environment import Environment
from edgeci_mqtt.planner.plan import Plan, Task, TaskInput, producers
from edgeci_mqtt.sim.auction import AUCTION_ROUND_OPS, AWARD_OPS_PER_BID, auction
from edgeci_mqtt.sim.messages import Messages
from edgeci_mqtt.sim.state import State
from edgeci_mqtt.sim.tail import TailReplay
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval

# the auction's constants are also named here, beside simulate, as its users know them
__all__ = ["AUCTION_ROUND_OPS", "AWARD_OPS_PER_BID", "SimResult", "WorkOf", "simulate"]

WorkOf = Callable[[FusedBlock, TileRegion], Sequence[OpWork]]
TaskId = tuple[int, int]
"""A task by its block's index in the plan and its own index in that block."""


@dataclass(frozen=True)
class SimResult:
    makespan_s: float
    timeline: tuple[Interval, ...]
    block_ends_s: tuple[float, ...]


def _copy_seconds(env: Environment, nbytes: int) -> float:
    """Orchestrator time to copy ``nbytes`` (slicing a tile out, stitching one in)."""
    return 2 * nbytes / env.orchestrator.rates["relu"]


class _Replay:
    """The plan's tasks, each run once its inputs are on its device (see the module docstring)."""

    def __init__(self, state: State, plan: Plan, work: WorkOf) -> None:
        self.state, self.env, self.plan, self.work = state, state.env, plan, work
        self.messages = Messages(state, plan)
        self.tail = TailReplay(self.messages, plan)
        self.reading = {b.block.start: k for k, b in enumerate(plan.blocks)}  # the block that reads each boundary
        self.ends = [0.0] * len(plan.blocks)
        self.unmerged = [sum(t.output == ORCHESTRATOR for t in b.tasks) for b in plan.blocks]
        self.missing = {(k, i): len(t.inputs) for k, b in enumerate(plan.blocks) for i, t in enumerate(b.tasks)}
        self.unmade: dict[tuple[TaskId, int], int] = {}  # device-held pieces: producing tasks not yet done
        self.readers: dict[TaskId, list[tuple[TaskId, int]]] = {}
        for k, block in enumerate(plan.blocks):
            for i, task in enumerate(block.tasks):
                for p, piece in enumerate(task.inputs):
                    if piece.source != ORCHESTRATOR:
                        made_by = producers(plan.blocks[k - 1] if k else None, piece)
                        self.unmade[((k, i), p)] = len(made_by)
                        for j in made_by:
                            self.readers.setdefault((k - 1, j), []).append(((k, i), p))
        self.pulls: dict[int, deque[int]] = {}  # tiles of a pulled block not yet handed out
        self.unkept = [len(b.tasks) for b in plan.blocks]  # behind a barrier: tiles of a block not done yet
        if plan.barrier:
            for k, block in enumerate(plan.blocks[1:], start=1):
                for i in range(len(block.tasks)):
                    self.missing[(k, i)] += 1  # the orchestrator's go

    def task(self, tid: TaskId) -> Task:
        return self.plan.blocks[tid[0]].tasks[tid[1]]

    def tile(self, tid: TaskId) -> tuple[FusedBlock, TileRegion]:
        return self.plan.blocks[tid[0]].block, self.task(tid).out_region

    def gathered(self, boundary: int, t: float) -> None:
        """The orchestrator holds the whole map at ``boundary`` from ``t``: start what reads it there."""
        state, k = self.state, self.reading.get(boundary)
        if k is None:  # the last block's output: the tail
            self.tail.gathered(t)
            return
        block = self.plan.blocks[k]
        if block.placement == "orchestrator":
            end = t
            for i in range(len(block.tasks)):
                seconds = self.env.orchestrator.work_seconds(self.work(*self.tile((k, i))))
                end = state.busy(ORCHESTRATOR, "gateway", t, seconds, self.tile((k, i)))
            self.ends[k] = end
            self.gathered(block.block.stop, end)
        elif block.dispatch == "pull":  # every device asks for a first tile
            self.pulls[k] = deque(range(len(block.tasks)))
            for view in self.env.devices:
                ask = t + view.link.latency_s + self.env.broker_link.latency_s
                state.at(ask, partial(self.pull, k, view.name, ask))
        else:
            sent = [
                ((k, i), p, task.device)
                for i, task in enumerate(block.tasks)
                for p in task.inputs
                if p.source == ORCHESTRATOR
            ]
            if k == 0:  # each program carries its device's first piece; the others follow once all are out
                carried = set({device: n for n, (_, _, device) in reversed(list(enumerate(sent)))}.values())
                sent = [sent[n] for n in sorted(carried)] + [s for n, s in enumerate(sent) if n not in carried]
            for tid, piece, device in sent:
                self.scatter(tid, piece, device, t)

    def pull(self, k: int, device: str, t: float) -> None:
        """``device`` asks for the next tile of pulled block ``k``."""
        if self.pulls[k]:
            tid = (k, self.pulls[k].popleft())
            for piece in self.task(tid).inputs:
                self.scatter(tid, piece, device, t)

    def scatter(self, tid: TaskId, piece: TaskInput, device: str, t: float) -> None:
        """The orchestrator cuts ``piece`` out of its map and sends it to ``device``."""
        state, nbytes = self.state, self.task(tid).input_bytes(piece)
        ready = state.busy(ORCHESTRATOR, "prepare", t, _copy_seconds(self.env, nbytes), self.tile(tid), device)
        self.messages.send(ORCHESTRATOR, device, ready, nbytes, self.tile(tid), partial(self.arrived, tid, device))

    def arrived(self, tid: TaskId, device: str, t: float) -> None:
        """One input piece of ``tid`` is on ``device``; the last one starts the task."""
        self.missing[tid] -= 1
        if self.missing[tid] == 0:
            seconds = self.env.device(device).profile.work_seconds(self.work(*self.tile(tid)))
            end = self.state.busy(device, "compute", t, seconds, self.tile(tid))
            self.state.at(end, partial(self.deliver, tid, device, end))

    def deliver(self, tid: TaskId, device: str, t: float) -> None:
        """``device`` computed ``tid``'s tile: it goes where the task's output says."""
        task = self.task(tid)
        if task.output == ORCHESTRATOR:
            boundary = self.plan.blocks[tid[0]].block.stop
            merge = partial(self.merge, tid, device)
            self.messages.send(device, ORCHESTRATOR, t, task.out_bytes, self.tile(tid), merge, boundary)
        elif task.output == device:
            self.kept(tid, t)
        else:
            self.messages.forward(device, task.output, t, task.out_bytes, self.tile(tid), partial(self.kept, tid))

    def merge(self, tid: TaskId, device: str, t: float) -> None:
        """The orchestrator stitches a result; the last one of a gathering block completes its map."""
        k, block = tid[0], self.plan.blocks[tid[0]]
        if block.dispatch == "pull":  # the result carries the device's request for more
            self.pull(k, device, t)
        copy = _copy_seconds(self.env, self.task(tid).out_bytes)
        end = self.state.busy(ORCHESTRATOR, "merge", t, copy, self.tile(tid), device)
        self.ends[k] = max(self.ends[k], end)
        self.unmerged[k] -= 1
        if self.unmerged[k] == 0 and block.gathers:
            self.state.at(end, partial(self.gathered, block.block.stop, end))

    def kept(self, tid: TaskId, t: float) -> None:
        """``tid``'s tile is on the device that keeps it from ``t``: pieces made of it may move."""
        self.ends[tid[0]] = max(self.ends[tid[0]], t)
        if tid[0] == len(self.plan.blocks) - 1:
            self.tail.final_tile(self.task(tid), self.tile(tid), t)
        if self.plan.barrier and tid[0] < len(self.plan.blocks) - 1:
            self.unkept[tid[0]] -= 1
            if not self.unkept[tid[0]]:
                self.go(tid[0] + 1, t)
        complete = []
        for reader, p in self.readers.get(tid, ()):
            self.unmade[(reader, p)] -= 1
            if self.unmade[(reader, p)] == 0:
                complete.append((reader, self.task(reader).inputs[p]))
        # what leaves first, as a device publishes a step's rows before it starts its next step
        complete.sort(key=lambda done: done[1].source == self.task(done[0]).device)
        for reader, piece in complete:
            task = self.task(reader)
            if piece.source == task.device:
                self.arrived(reader, task.device, t)
            else:
                then = partial(self.arrived, reader, task.device)
                nbytes, tile = task.input_bytes(piece), self.tile(reader)
                self.messages.forward(piece.source, task.device, t, nbytes, tile, then, piece.boundary)

    def go(self, k: int, t: float) -> None:
        """Behind a barrier: the last device's word that block ``k - 1`` is done reaches the
        orchestrator, whose go reaches every device of block ``k`` (small messages: latency)."""
        heard = t + max(v.link.latency_s for v in self.env.devices) + self.env.broker_link.latency_s
        for i, task in enumerate(self.plan.blocks[k].tasks):
            arrival = heard + self.env.broker_link.latency_s + self.env.device(task.device).link.latency_s
            self.state.at(arrival, partial(self.arrived, (k, i), task.device, arrival))


def simulate(plan: Plan, env: Environment, work: WorkOf) -> SimResult:
    """Replay ``plan`` on ``env``; the request reaches the orchestrator at time 0, and the
    makespan ends when its answer leaves.

    ``work`` gives the ops of a tile (e.g. :class:`edgeci_mqtt.planner.costs.TaskWork`).
    """
    state = State(env)
    replay = _Replay(state, plan, work)
    shape = plan.input_shape
    seconds = intake_seconds(env.orchestrator, shape.channels * shape.height * shape.width * BYTES_PER_ELEMENT)
    start = state.busy(ORCHESTRATOR, "intake", 0.0, seconds)  # the request's message, its image copied out
    if plan.auctioned:  # the tasks are what the award says: nothing moves before it
        auction(state, plan, partial(replay.gathered, 0), start)
    else:
        state.at(start, partial(replay.gathered, 0, start))
    state.run()
    assert replay.tail.end is not None, "a valid plan always reaches its tail"
    timeline = tuple(sorted(state.timeline, key=lambda i: (i.start, i.resource)))
    return SimResult(replay.tail.end, timeline, tuple(replay.ends))
