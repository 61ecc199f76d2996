"""Discrete-event replay of a plan on a cluster: a star through one broker.

Network model. The orchestrator sits on the broker host. Every task travels broker
host link (down) -> device link (down); every result device link (up) -> broker host
link (up). Links are full duplex; each direction of each link is a FIFO server at its
bandwidth, so concurrent transfers on the broker link queue behind one another
(contention), and a transfer crosses both hops cut-through: it can finish no earlier
than either hop allows, and each hop is busy for the message's bytes at its own rate
(a slow device trickling a result in does not hold the broker's link for the others).
Each message pays both links' one-way latencies and a fixed envelope
(:data:`MESSAGE_OVERHEAD_BYTES`).

Compute model. Each device runs one task at a time in arrival order, for the time its
profile prices the task's ops. The orchestrator is one CPU too (its cluster share): it
prepares every input piece it sends (copying the rows), stitches every result into the
block's output, runs blocks placed on it (DeepThings' gateway layers) and the tail.

Data dependencies. The plan is a task graph (:mod:`edgeci_mqtt.planner.plan`) and a task
runs as soon as all its input pieces are on its device. A piece from the orchestrator
is sent once the orchestrator holds the block's whole input map, i.e. once the previous
block is fully stitched (a gather strategy's barrier is just that dependency). A piece
held by a device is ready once the tasks that make it have finished there, and then
travels device -> broker -> device: up the source's link and into the broker host, then,
once the broker has it, out of the broker host and down the target's link (two messages'
worth of latency and envelope, and :data:`~edgeci_mqtt.planner.environment.MESSAGE_OPS`
of CPU on each end; nothing when source and target are the same device).
Assembling pieces on a device costs nothing here. A tile kept on another device than the
one computing it travels the same way.

Auction. An auctioned plan (EdgeCI) first holds every block's round at once, as the
runtime does: a call to every device, each device prices the rounds, its bids come
back, and once the bids of the devices the plan gives work to are in, the orchestrator
awards every round; then the first block starts. Pricing one round costs a device
:data:`AUCTION_ROUND_OPS` per-op overheads, and awarding one costs the orchestrator
:data:`AWARD_OPS_PER_BID` per bid: counted in per-op overheads, both follow each CPU's
speed (set from measured rounds: docs/PLANNER.md, simulator).

Dispatch. ``static`` tasks are sent in plan order as their inputs become ready;
``pull`` blocks keep tiles in a queue on the orchestrator and send the next one to
whichever device asks (its previous result carries the request), as DeepThings' work
stealing does.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.planner.awas import auction_item_count
from edgeci_mqtt.planner.costs import message_seconds
from edgeci_mqtt.planner.environment import MESSAGE_OVERHEAD_BYTES, Environment
from edgeci_mqtt.planner.plan import Plan, Task, TaskInput, producers
from edgeci_mqtt.planner.tail import LOGITS_BYTES, TailWork
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval
from edgeci_mqtt.wire.compression import (
    CODECS,
    ZEROS_DECODE_PASSES,
    ZEROS_ENCODE_PASSES,
    compressed_size,
    send_seconds,
)

__all__ = ["SimResult", "WorkOf", "simulate"]

WorkOf = Callable[[FusedBlock, TileRegion], Sequence[OpWork]]
Tile = tuple[FusedBlock | None, TileRegion | None]
"""Which task's tile an interval is for (block, output region), if any."""
_NO_TILE: Tile = (None, None)
TaskId = tuple[int, int]
"""A task by its block's index in the plan and its own index in that block."""
AUCTION_ROUND_OPS = 25
AWARD_OPS_PER_BID = 15
_CALL_BYTES, _BID_BYTES_PER_ITEM = 200, 20  # a call lists items; a bid prices each twice


@dataclass(frozen=True)
class SimResult:
    makespan_s: float
    timeline: tuple[Interval, ...]
    block_ends_s: tuple[float, ...]


@dataclass
class _Fifo:
    """One server: a link direction at ``rate`` bytes/s, or a CPU (rate 1: seconds in)."""

    rate: float
    free: float = 0.0

    def reserve(self, ready: float, amount: float) -> tuple[float, float]:
        start = max(ready, self.free)
        self.free = start + amount / self.rate
        return start, self.free


@dataclass
class _State:
    env: Environment
    events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    timeline: list[Interval] = field(default_factory=list)
    seq: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]

    def __post_init__(self) -> None:
        link = self.env.broker_link
        self.broker_down, self.broker_up = _Fifo(link.bytes_per_s), _Fifo(link.bytes_per_s)
        self.down = {v.name: _Fifo(v.link.bytes_per_s) for v in self.env.devices}
        self.up = {v.name: _Fifo(v.link.bytes_per_s) for v in self.env.devices}
        self.cpu = {v.name: _Fifo(1.0) for v in self.env.devices}
        self.cpu[ORCHESTRATOR] = _Fifo(1.0)

    def at(self, time: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (time, next(self.seq), action))

    def run(self) -> None:
        while self.events:
            _, _, action = heapq.heappop(self.events)
            action()

    def busy(
        self, resource: str, kind: str, ready: float, seconds: float, tile: Tile = _NO_TILE, note: str = ""
    ) -> float:
        start, end = self.cpu[resource].reserve(ready, seconds)
        self.timeline.append(Interval(resource, kind, start, end, *tile, note))
        return end

    def transfer(
        self, device: str, ready: float, nbytes: int, downward: bool, tile: Tile = _NO_TILE, note: str = ""
    ) -> float:
        """Arrival time of a message between the broker host (and the orchestrator on it) and ``device``."""
        size = nbytes + MESSAGE_OVERHEAD_BYTES
        first, second = (self.broker_down, self.down[device]) if downward else (self.up[device], self.broker_up)
        start, first_end = first.reserve(ready, size)
        second_start = max(start, second.free)
        second.free = second_start + size / second.rate  # busy for its own time only: a slow first
        end = max(first_end, second.free)  # hop trickling bytes in does not block the second for others
        self.timeline.append(Interval(device, "receive" if downward else "send", start, end, *tile, note))
        latency = self.env.device(device).link.latency_s + self.env.broker_link.latency_s
        return end + latency


def _copy_seconds(env: Environment, nbytes: int) -> float:
    """Orchestrator time to copy ``nbytes`` (slicing a tile out, stitching one in)."""
    return 2 * nbytes / env.orchestrator.rates["relu"]


class _Replay:
    """The plan's tasks, each run once its inputs are on its device (see the module docstring)."""

    def __init__(self, state: _State, plan: Plan, work: WorkOf) -> None:
        self.state, self.env, self.plan, self.work = state, state.env, plan, work
        self.reading = {b.block.start: k for k, b in enumerate(plan.blocks)}  # the block that reads each boundary
        self.ends = [0.0] * len(plan.blocks)
        self.tail_end: float | None = None
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
        last = plan.blocks[-1].tasks if plan.blocks else ()
        self.tail = plan.tail
        self.tail_work = TailWork.of(plan.tail_work) if not plan.tail.on_orchestrator else None
        self.tail_missing = dict.fromkeys(plan.tail.readers, len(last))  # final tiles not yet with each reader
        self.slices_missing = len(plan.tail.parts)
        self.final = plan.blocks[-1].block.stop if plan.blocks else 0
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
            self.tail_end = state.busy(ORCHESTRATOR, "tail", t, self.env.orchestrator.work_seconds(self.plan.tail_work))
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
            for i, task in enumerate(block.tasks):
                for piece in task.inputs:
                    if piece.source == ORCHESTRATOR:
                        self.scatter((k, i), piece, task.device, t)

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
        arrival = state.transfer(device, ready, nbytes, True, self.tile(tid))
        state.at(arrival, partial(self.arrived, tid, device, arrival))

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
            ready, nbytes, then = self.coded(device, ORCHESTRATOR, t, task.out_bytes, self.tile(tid), merge, boundary)
            arrival = self.state.transfer(device, ready, nbytes, False, self.tile(tid))
            self.state.at(arrival, partial(then, arrival))
        elif task.output == device:
            self.kept(tid, t)
        else:
            self.forward(device, task.output, t, task.out_bytes, self.tile(tid), partial(self.kept, tid))

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
        if tid[0] == len(self.plan.blocks) - 1 and self.tail_work is not None:
            self.to_tail(tid, t)
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
                self.forward(piece.source, task.device, t, nbytes, tile, then, piece.boundary)

    def go(self, k: int, t: float) -> None:
        """Behind a barrier: the last device's word that block ``k - 1`` is done reaches the
        orchestrator, whose go reaches every device of block ``k`` (small messages: latency)."""
        heard = t + max(v.link.latency_s for v in self.env.devices) + self.env.broker_link.latency_s
        for i, task in enumerate(self.plan.blocks[k].tasks):
            arrival = heard + self.env.broker_link.latency_s + self.env.device(task.device).link.latency_s
            self.state.at(arrival, partial(self.arrived, (k, i), task.device, arrival))

    # ------------------------------------------------------------ a tail off the orchestrator
    def profile(self, resource: str) -> DeviceProfile:
        return self.env.orchestrator if resource == ORCHESTRATOR else self.env.device(resource).profile

    def message_cpu(self, resource: str) -> float:
        """CPU one device-to-device message costs ``resource`` (sending or receiving it)."""
        return message_seconds(self.profile(resource))

    def send(
        self,
        source: str,
        target: str,
        t: float,
        nbytes: int,
        tile: Tile,
        then: Callable[[float], None],
        boundary: int | None = None,
    ) -> None:
        """``nbytes`` from ``source`` to ``target`` (either may be the orchestrator), then ``then(arrival)``."""
        if source == target:
            then(t)
        elif target == ORCHESTRATOR:
            t, nbytes, then = self.coded(source, target, t, nbytes, tile, then, boundary)
            arrival = self.state.transfer(source, t, nbytes, False, tile, "to the tail")
            self.state.at(arrival, partial(then, arrival))
        elif source == ORCHESTRATOR:
            arrival = self.state.transfer(target, t, nbytes, True, tile, "to the tail")
            self.state.at(arrival, partial(then, arrival))
        else:
            self.forward(source, target, t, nbytes, tile, then, boundary)

    def to_tail(self, tid: TaskId, t: float) -> None:
        """A final tile is ready on its device: it goes to every reader of the tail."""
        task = self.task(tid)
        for reader in self.tail.readers:
            then = partial(self.tail_input, reader)
            self.send(task.output, reader, t, task.out_bytes, self.tile(tid), then, self.final)

    def tail_input(self, reader: str, t: float) -> None:
        assert self.tail_work is not None
        self.tail_missing[reader] -= 1
        if self.tail_missing[reader]:
            return
        work = self.tail_work
        span = dict(self.tail.parts).get(reader)
        ops = work.part(span) if span is not None else (*work.head, work.first, *work.rest)
        end = self.state.busy(reader, "tail", t, self.profile(reader).work_seconds(ops))
        if span is None:
            self.send(reader, ORCHESTRATOR, end, LOGITS_BYTES, _NO_TILE, self.answered)
        else:
            self.send(reader, self.tail.finisher, end, work.slice_bytes(span), _NO_TILE, self.slice_input)

    def slice_input(self, t: float) -> None:
        assert self.tail_work is not None
        self.slices_missing -= 1
        if not self.slices_missing:
            finisher = self.tail.finisher
            end = self.state.busy(finisher, "tail", t, self.profile(finisher).work_seconds(self.tail_work.rest))
            self.send(finisher, ORCHESTRATOR, end, LOGITS_BYTES, _NO_TILE, self.answered)

    def answered(self, t: float) -> None:
        self.tail_end = t

    def coded(
        self,
        source: str,
        target: str,
        t: float,
        nbytes: int,
        tile: Tile,
        then: Callable[[float], None],
        boundary: int | None,
    ) -> tuple[float, int, Callable[[float], None]]:
        """A map at ``boundary`` of a plan that compresses goes as the sender would send it
        (:func:`~edgeci_mqtt.wire.compression.choose_codec` from the boundary's share of
        non-zeros): encoded on the sender's CPU, fewer bytes, decoded on the receiver's.
        Returns when the bytes can leave, how many, and what to do on arrival."""
        density = self.plan.densities[boundary] if boundary is not None and self.plan.densities else 1.0
        if not self.plan.compress or density >= 1.0:
            return t, nbytes, then
        view = self.env.device(source)
        rate = view.profile.rates["relu"]
        codec = min(CODECS, key=lambda c: send_seconds(nbytes // 4, density, c, view.link.bytes_per_s, rate))
        if codec == "raw":
            return t, nbytes, then
        relu = 2 * nbytes
        ready = self.state.busy(source, "encode", t, ZEROS_ENCODE_PASSES * relu / rate, tile)
        decode = ZEROS_DECODE_PASSES * relu / self.profile(target).rates["relu"]

        def decoded(arrival: float) -> None:
            then(self.state.busy(target, "decode", arrival, decode, tile))

        return ready, compressed_size(nbytes // 4, density, codec), decoded

    def forward(
        self,
        source: str,
        target: str,
        t: float,
        nbytes: int,
        tile: Tile,
        then: Callable[[float], None],
        boundary: int | None = None,
    ) -> None:
        """Device to device through the broker, stored and forwarded there; ``then(arrival)``
        (compressed as :meth:`coded` says). The message costs the sender's CPU before it
        leaves and the receiver's after it lands (:func:`~edgeci_mqtt.planner.costs.message_seconds`)."""
        t, nbytes, then = self.coded(source, target, t, nbytes, tile, then, boundary)
        t = self.state.busy(source, "encode", t, self.message_cpu(source), tile)
        at_broker = self.state.transfer(source, t, nbytes, False, tile, f"to {target}")

        def onwards() -> None:
            arrival = self.state.transfer(target, at_broker, nbytes, True, tile, f"from {source}")
            self.state.at(arrival, partial(landed, arrival))

        def landed(arrival: float) -> None:  # the receiver's CPU is booked once the message is there
            handled = self.state.busy(target, "decode", arrival, self.message_cpu(target), tile)
            self.state.at(handled, partial(then, handled))

        self.state.at(at_broker, onwards)


def _auction(state: _State, plan: Plan, then: Callable[[float], None]) -> None:
    """Every block's round at once (see the module docstring); ``then(t)`` starts the first block.

    Event-driven like the blocks, so a far device's late bid holds its links when it
    travels, not from time zero."""
    lots = [b for b in plan.blocks if b.placement != "orchestrator"]
    if not lots:
        state.at(0.0, lambda: then(0.0))
        return
    items = sum(auction_item_count(max(t.out_region.rows.stop for t in b.tasks)) for b in lots)
    env = state.env
    names = {v.name for v in env.devices}
    waiting = (set(plan.devices) & names) or names

    def arrived(device: str, t: float) -> None:
        if device not in waiting:
            return
        waiting.discard(device)
        if not waiting:
            state.timeline.append(Interval(ORCHESTRATOR, "auction", 0.0, t, note="waiting for bids"))
            seconds = len(lots) * AWARD_OPS_PER_BID * len(env.devices) * env.orchestrator.op_overhead_s
            end = state.busy(ORCHESTRATOR, "auction", t, seconds, note="award")
            state.at(end, lambda: then(end))

    def priced(device: str, t: float) -> None:
        arrival = state.transfer(device, t, items * _BID_BYTES_PER_ITEM, False, note="bids")
        state.at(arrival, partial(arrived, device, arrival))

    def called(device: str, t: float) -> None:
        seconds = len(lots) * AUCTION_ROUND_OPS * env.device(device).profile.op_overhead_s
        end = state.busy(device, "auction", t, seconds, note="bids")
        state.at(end, partial(priced, device, end))

    for view in env.devices:
        calls = state.transfer(view.name, 0.0, len(lots) * _CALL_BYTES, True, note="auction calls")
        state.at(calls, partial(called, view.name, calls))


def simulate(plan: Plan, env: Environment, work: WorkOf) -> SimResult:
    """Replay ``plan`` on ``env``; the input image is on the orchestrator at time 0.

    ``work`` gives the ops of a tile (e.g. :class:`edgeci_mqtt.planner.costs.TaskWork`).
    """
    state = _State(env)
    replay = _Replay(state, plan, work)
    if plan.auctioned:  # the tasks are what the award says: nothing moves before it
        _auction(state, plan, partial(replay.gathered, 0))
    else:
        state.at(0.0, partial(replay.gathered, 0, 0.0))
    state.run()
    assert replay.tail_end is not None, "a valid plan always reaches its tail"
    timeline = tuple(sorted(state.timeline, key=lambda i: (i.start, i.resource)))
    return SimResult(replay.tail_end, timeline, tuple(replay.ends))
