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
prepares every task message (copying the input rows), stitches every result into the
block's output, runs blocks placed on it (DeepThings' gateway layers) and the tail.
Blocks are sequential: block k+1 is scattered once block k is fully stitched.

Auction. An auctioned plan (EdgeCI) first holds every block's round at once, as the
runtime does: a call to every device, each device prices the rounds, its bids come
back, and once the bids of the devices the plan gives work to are in, the orchestrator
awards every round; then the first block starts. Pricing one round costs a device
:data:`AUCTION_ROUND_OPS` per-op overheads (measured: 0.12-0.26 ms for VGG-16's rounds on
a host whose per-op overhead is 9 µs); awarding one costs the orchestrator
:data:`AWARD_OPS_PER_BID` per bid (measured: 0.3-0.9 ms for 4-8 bids, median 12 per bid,
2-52 over VGG-16 and ResNet-34 rounds with 4 to 64 bidders).

Dispatch. ``static`` blocks send every task at once in plan order; ``pull`` blocks
keep tiles in a queue on the orchestrator and send the next one to whichever device
asks (its previous result carries the request), as DeepThings' work stealing does.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial, reduce

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.planner.awas import auction_item_count
from edgeci_mqtt.planner.environment import MESSAGE_OVERHEAD_BYTES, Environment
from edgeci_mqtt.planner.plan import BlockPlan, Plan, Task
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval

__all__ = ["SimResult", "WorkOf", "simulate"]

WorkOf = Callable[[FusedBlock, TileRegion], Sequence[OpWork]]
Tile = tuple[FusedBlock | None, TileRegion | None]
"""Which task's tile an interval is for (block, output region), if any."""
_NO_TILE: Tile = (None, None)
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
        """Arrival time of a message between the orchestrator and ``device``."""
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


class _BlockRun:
    """Runs one block from ``start``; calls ``done(end)`` when every tile is stitched."""

    def __init__(self, state: _State, plan: BlockPlan, work: WorkOf, done: Callable[[float], None]) -> None:
        self.state, self.plan, self.done, self._work = state, plan, done, work
        self.pending = len(plan.tasks)
        self.queue = list(plan.tasks)

    def work(self, task: Task) -> Sequence[OpWork]:
        return self._work(self.plan.block, task.out_region)

    def start(self, t: float) -> None:
        state = self.state
        if self.plan.placement == "orchestrator":
            seconds = sum(state.env.orchestrator.work_seconds(self.work(task)) for task in self.plan.tasks)
            whole = reduce(TileRegion.hull, (task.out_region for task in self.plan.tasks))
            self.done(state.busy(ORCHESTRATOR, "gateway", t, seconds, (self.plan.block, whole)))
        elif self.plan.dispatch == "static":
            for task in self.queue:
                self.send(t, task, task.device)
            self.queue = []
        else:  # pull: every device asks for a first tile
            for view in state.env.devices:
                ask = t + view.link.latency_s + state.env.broker_link.latency_s
                state.at(ask, partial(self.next_for, view.name, ask))

    def next_for(self, device: str, t: float) -> None:
        if self.queue:
            self.send(t, self.queue.pop(0), device)

    def send(self, t: float, task: Task, device: str) -> None:
        state = self.state
        tile = (self.plan.block, task.out_region)
        ready = state.busy(ORCHESTRATOR, "prepare", t, _copy_seconds(state.env, task.in_bytes), tile, device)
        arrival = state.transfer(device, ready, task.in_bytes, True, tile)
        state.at(arrival, lambda: self.compute(arrival, task, device))

    def compute(self, t: float, task: Task, device: str) -> None:
        state = self.state
        seconds = state.env.device(device).profile.work_seconds(self.work(task))
        end = state.busy(device, "compute", t, seconds, (self.plan.block, task.out_region))
        state.at(end, lambda: self.reply(end, task, device))

    def reply(self, t: float, task: Task, device: str) -> None:
        arrival = self.state.transfer(device, t, task.out_bytes, False, (self.plan.block, task.out_region))
        self.state.at(arrival, lambda: self.stitch(arrival, task, device))

    def stitch(self, t: float, task: Task, device: str) -> None:
        state = self.state
        if self.plan.dispatch == "pull":
            self.next_for(device, t)
        tile = (self.plan.block, task.out_region)
        end = state.busy(ORCHESTRATOR, "merge", t, _copy_seconds(state.env, task.out_bytes), tile, device)
        self.pending -= 1
        if self.pending == 0:
            state.at(end, lambda: self.done(end))


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
    ends: list[float] = []

    def start_block(index: int, t: float) -> None:
        if index == len(plan.blocks):
            ends.append(state.busy(ORCHESTRATOR, "tail", t, env.orchestrator.work_seconds(plan.tail_work)))
            return
        block = plan.blocks[index]

        def finished(end: float) -> None:
            ends.append(end)
            start_block(index + 1, end)

        _BlockRun(state, block, work, finished).start(t)

    if plan.auctioned:
        _auction(state, plan, lambda t: start_block(0, t))
    else:
        state.at(0.0, lambda: start_block(0, 0.0))
    state.run()
    timeline = tuple(sorted(state.timeline, key=lambda i: (i.start, i.resource)))
    return SimResult(ends[-1], timeline, tuple(ends[:-1]))
