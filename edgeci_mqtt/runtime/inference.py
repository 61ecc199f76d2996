"""One distributed inference, block by block: auction, scatter, gather, stitch.

The decisions (which task goes where, what is lost, what is re-auctioned) are made by
the pure :class:`~edgeci_mqtt.runtime.progress.BlockProgress`; this module is its edge:
it stamps events with the clock and the online devices, publishes tasks and auction
messages, checks result tiles and stitches them, and records the traced timeline.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion
from edgeci_mqtt.errors import InferenceError, PlanningError
from edgeci_mqtt.planner.awas import Award, Bid, auction_items, award
from edgeci_mqtt.planner.costs import make_task
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.planner.plan import BlockPlan, Plan, Task
from edgeci_mqtt.planner.tail import TailPlan
from edgeci_mqtt.runtime.auction import Auctioneer, Silence
from edgeci_mqtt.runtime.models_held import HeldModel
from edgeci_mqtt.runtime.penalties import Penalties
from edgeci_mqtt.runtime.progress import (
    FAILED_ELSEWHERE,
    OFFLINE,
    Action,
    Awarded,
    BlockProgress,
    Fail,
    Ignore,
    Lost,
    Reauction,
    ResultArrived,
    Send,
    Start,
    Stitch,
    Tick,
)
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval
from edgeci_mqtt.wire import (
    DEVICE_TASKS,
    BidMessage,
    Progress,
    ResultMessage,
    RowsMessage,
    StepDone,
    StepReport,
    TaskMessage,
    VectorMessage,
    encode,
)

__all__ = ["InferenceRun", "Mailboxes", "Run", "RunSetup", "Timings", "result_problem"]

log = logging.getLogger("edgeci.orchestrator")

MIN_TASK_DEADLINE_S = 3.0
MAX_TASK_DEADLINE_S = 300.0
DEADLINE_FACTOR = 5.0
POLL_S = 0.05


@functools.lru_cache(maxsize=256)
def _award(bids: tuple[Bid, ...], count: int) -> Award:
    """:func:`award`, remembered: it depends on the bids only, and idle devices bid the same
    for every request (a 0.25-CPU orchestrator takes tens of ms per block)."""
    return award(bids, count)


def task_allowance(predicted_s: float, min_allowance_s: float) -> float:
    """How long work predicted to take ``predicted_s`` may take before it is given up:
    :data:`DEADLINE_FACTOR` times that, at least ``min_allowance_s``, at most
    :data:`MAX_TASK_DEADLINE_S`."""
    return min(MAX_TASK_DEADLINE_S, max(min_allowance_s, DEADLINE_FACTOR * predicted_s))


@dataclass
class Timings:
    """Where one inference's time went (seconds, on the orchestrator's clock)."""

    plan_s: float = 0.0
    auction_s: float = 0.0
    scatter_s: float = 0.0
    wait_s: float = 0.0
    compute_s: float = 0.0
    merge_s: float = 0.0
    gateway_s: float = 0.0
    tail_s: float = 0.0
    recovered_tasks: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


Inbox = ResultMessage | RowsMessage | VectorMessage | StepDone | StepReport | Progress
"""What a device sends an orchestrator about a request."""
Arrival = tuple[float, Inbox]
"""A result and when it arrived (``perf_counter``), for traces."""


@dataclass
class Mailboxes:
    """Where the orchestrator's dispatcher drops bids (by round) and results (by request)
    for the inferences in flight; anything for a request not in flight is dropped."""

    results: dict[str, queue.Queue[Arrival]] = field(default_factory=dict)
    bids: dict[str, queue.Queue[BidMessage]] = field(default_factory=dict)
    silence: Silence = field(default_factory=Silence)
    dropped: int = 0

    @contextlib.contextmanager
    def open(self, request: str) -> Iterator[queue.Queue[Arrival]]:
        """A result box for ``request`` while the block runs."""
        box: queue.Queue[Arrival] = queue.Queue()
        self.results[request] = box
        try:
            yield box
        finally:
            self.results.pop(request, None)

    def deliver(self, result: Inbox, arrived: float) -> None:
        box = self.results.get(result.request)
        if box is None:
            self.dropped += 1
            log.debug("dropped a result of %s, which is not in flight", result.request)
        else:
            box.put((arrived, result))


def result_problem(result: ResultMessage, task: Task, channels: int) -> str:
    """Why ``result`` cannot be stitched as ``task``'s output tile ("" if it can)."""
    if result.error:
        return f"device error: {result.error}"
    region = task.out_region
    expected = (1, channels, region.height, region.width)
    output = result.output
    if output is None or output.shape != expected or output.dtype != np.float32:
        got = "nothing" if output is None else f"{output.dtype}{list(output.shape)}"
        return f"tile is {got}, expected float32{list(expected)}"
    if result.out_region != region:
        return f"tile is for {result.out_region}, expected {region}"
    return ""


@dataclass(frozen=True)
class RunSetup:
    """What a run of one request gets from its orchestrator. ``devices()`` gives the live
    candidate devices; ``prepare(device, block)`` runs before work is sent (weights for
    fetching devices). With ``trace`` the run records what every resource did, in seconds
    from ``origin`` (a ``perf_counter`` value: when the request arrived)."""

    orchestrator: str
    request: str
    held: HeldModel
    plan: Plan
    shapes: list[FeatureShape]
    devices: Callable[[], list[DeviceView]]
    publish: Callable[[str, bytes], None]
    prepare: Callable[[str, FusedBlock], None]
    mail: Mailboxes
    auction_s: float
    origin: float
    trace: bool = False
    min_allowance_s: float = MIN_TASK_DEADLINE_S
    backlog_s: float = 0.0
    """Predicted seconds of work already handed to the devices this run uses (it may queue behind it)."""
    give_up_at: float | None = None
    """When nobody waits for the answer any more (a ``perf_counter`` time: the client's
    deadline); the run stops there instead of computing for no one. None: never."""
    tails: dict[str, TailPlan] = field(default_factory=dict)
    """The orchestrator's tail placement in use, by model digest (``flow``): shared by its
    runs, so that devices keep the classifier rows they were given."""
    penalties: Penalties = field(default_factory=Penalties)
    """The orchestrator's record of devices that failed requests: a device this run gives
    up on is held out of the next requests too."""


class Run:
    """What every run of one request shares: its setup, its auctioneer, its timings and,
    with ``trace``, the timeline of what every resource did, in seconds from ``origin`` (a
    ``perf_counter`` value: when the request arrived)."""

    def __init__(self, setup: RunSetup) -> None:
        self.orchestrator, self.request, self.held = setup.orchestrator, setup.request, setup.held
        self.plan, self.shapes, self.devices, self.publish = setup.plan, setup.shapes, setup.devices, setup.publish
        self.prepare, self.mail, self.min_allowance_s = setup.prepare, setup.mail, setup.min_allowance_s
        self.backlog_s, self.give_up_at = setup.backlog_s, setup.give_up_at
        self.tails, self.penalties = setup.tails, setup.penalties
        self.input_hw = (self.shapes[0].height, self.shapes[0].width)
        self.auctioneer = Auctioneer(
            self.orchestrator,
            self.held.chain.model_name,
            self.input_hw,
            self.publish,
            self.mail.bids,
            setup.auction_s,
            self.mail.silence,
        )
        self.timings = Timings()
        self.failed: set[str] = set()
        self.used: set[str] = set()
        self.origin = setup.origin
        self.timeline: list[Interval] | None = [] if setup.trace else None
        self._wall_offset = time.time() - time.perf_counter()

    def give_up_on(self, devices: set[str], why: str, gone: bool = False) -> None:
        """This run uses these devices no more; unless they left (``gone``: the device table
        knows), the orchestrator's next requests hold them out as well (:class:`Penalties`)."""
        self.failed |= devices
        if devices and not gone:
            self.penalties.failed(devices, time.perf_counter(), f"{self.request}: {why}")

    def check_wanted(self) -> None:
        """Raise if the client stopped waiting (its deadline passed): the caller's cleanup
        (releasing the devices' rows) runs, and no more work is handed out for it."""
        if self.give_up_at is not None and time.perf_counter() > self.give_up_at:
            raise InferenceError(f"{self.request}: the client's deadline passed; stopped unfinished")

    def mark(
        self,
        resource: str,
        kind: str,
        start: float,
        end: float,
        note: str = "",
        block: FusedBlock | None = None,
        region: TileRegion | None = None,
    ) -> None:
        """Record an interval (``perf_counter`` times) if this request is traced."""
        if self.timeline is not None:
            self.timeline.append(Interval(resource, kind, start - self.origin, end - self.origin, block, region, note))


class InferenceRun(Run):
    """Runs a gathering ``plan`` for one request: block by block, every tile to and from
    the orchestrator. ``devices()`` gives the live candidate devices; ``prepare(device,
    block)`` runs before a task is sent (weights for fetching devices)."""

    def __init__(self, setup: RunSetup, auctioned: bool) -> None:
        super().__init__(setup)
        self.auctioned = auctioned
        self._sent: dict[str, tuple[float, FusedBlock]] = {}  # task id -> (sent at, block), for the timeline

    # ------------------------------------------------------------ public
    def run(self, x: Tensor) -> Tensor:
        on_devices = [b for b in self.plan.blocks if b.placement != "orchestrator"]
        if self.auctioned:  # every block's round at once: one round trip, not one per block
            awarded = self._auctions([(b.block, self._items(b.block), self._width(b.block)) for b in on_devices])
        else:
            awarded = [list(b.tasks) for b in on_devices]
        awards = iter(awarded)
        for block_plan in self.plan.blocks:
            self.check_wanted()
            if block_plan.placement == "orchestrator":
                x = self._gateway(block_plan.block, x)
            else:
                x = self._block(block_plan, x, next(awards))
        started = time.perf_counter()
        with torch.inference_mode():
            logits = self.held.chain.tail(x)
        self.timings.tail_s = time.perf_counter() - started
        self.mark(ORCHESTRATOR, "tail", started, started + self.timings.tail_s)
        return logits

    # ------------------------------------------------------------ blocks
    def _online(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices())

    def _items(self, block: FusedBlock) -> list[Span]:
        return list(auction_items(self.shapes[block.stop]))

    def _width(self, block: FusedBlock) -> Span:
        return Span(0, self.shapes[block.stop].width)

    def _gateway(self, block: FusedBlock, x: Tensor) -> Tensor:
        """A block the plan keeps on the orchestrator (DeepThings' gateway layers)."""
        started = time.perf_counter()
        out_shape = self.shapes[block.stop]
        whole_out = TileRegion.whole(out_shape.height, out_shape.width)
        with torch.inference_mode():
            out = run_block_tile(
                self.held.chain.kernels, self.shapes, block, x, TileRegion.whole(x.shape[2], x.shape[3]), whole_out
            )
        self.timings.gateway_s += time.perf_counter() - started
        self.mark(ORCHESTRATOR, "gateway", started, time.perf_counter(), block=block, region=whole_out)
        return out

    def _block(self, block_plan: BlockPlan, x: Tensor, tasks: list[Task]) -> Tensor:
        """Run one block on devices; ``tasks`` are its awarded (or planned) tasks."""
        block = block_plan.block
        if not tasks:
            raise PlanningError(f"block {block} is on devices but has no tasks")
        out_shape = self.shapes[block.stop]
        out = torch.empty(1, out_shape.channels, out_shape.height, out_shape.width)
        if self.auctioned and any(t.device not in self._online() or t.device in self.failed for t in tasks):
            tasks = self._auctions([(block, self._items(block), self._width(block))])[0]  # a winner left
        progress = BlockProgress(
            tuple(tasks),
            pull=block_plan.dispatch == "pull",
            allowance=self._allowance(block),
            prefix=uuid.uuid4().hex[:10] + "-",
            failed=self.failed,
        )
        started = time.perf_counter()
        with self.mail.open(self.request) as box:
            self._perform(progress, block, x, out, progress.handle(Start(started, self._online())))
            self.timings.compute_s += self._follow(progress, block, x, out, box)
        self.timings.recovered_tasks += progress.recovered
        self.timings.wait_s += time.perf_counter() - started
        return out

    def _follow(
        self, progress: BlockProgress, block: FusedBlock, x: Tensor, out: Tensor, box: queue.Queue[Arrival]
    ) -> float:
        """Results and ticks into the block's progress until every tile is stitched; the
        longest compute time a stitched result reported."""
        out_shape, block_compute = self.shapes[block.stop], 0.0
        while not progress.done:
            self.check_wanted()
            try:
                arrived, result = box.get(timeout=POLL_S)
            except queue.Empty:
                result = None
            if isinstance(result, ResultMessage) and result.request == self.request:
                expected = progress.expected(result.task)
                problem = "" if expected is None else result_problem(result, expected[0], out_shape.channels)
                actions = progress.handle(ResultArrived(result.task, result.device, problem, arrived))
                if any(isinstance(a, Stitch) for a in actions) and result.timings is not None:
                    block_compute = max(block_compute, result.timings.compute_s)
                self._perform(progress, block, x, out, actions, result, arrived)
            self._perform(progress, block, x, out, progress.handle(Tick(time.perf_counter(), self._online())))
        return block_compute

    def _allowance(self, block: FusedBlock) -> Callable[[Task, str], float]:
        """How long a device may take for a task: a multiple of its own predicted time."""
        rows = self.held.row_model(self.shapes[0].height, self.shapes[0].width)

        def allowance(task: Task, device: str) -> float:
            view = next((d for d in self.devices() if d.name == device), None)
            r = task.out_region.rows
            predicted = (
                float(rows.strip_seconds(view, block, np.array([r.start]), np.array([r.stop]))[0]) if view else 1.0
            )
            return task_allowance(predicted, self.min_allowance_s)

        return allowance

    def _perform(
        self,
        progress: BlockProgress,
        block: FusedBlock,
        x: Tensor,
        out: Tensor,
        actions: list[Action],
        result: ResultMessage | None = None,
        arrived: float = 0.0,
    ) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(block, action, x)
            elif isinstance(action, Stitch):
                assert result is not None and result.output is not None  # a Stitch answers a result
                self._stitch(action, result, arrived, out)
            elif isinstance(action, Lost):
                if action.why not in (OFFLINE, FAILED_ELSEWHERE):  # those are counted already
                    self.give_up_on({action.device}, action.why)
                log.warning(
                    "%s: task %s on %s lost (%s); recovering it",
                    self.request,
                    action.task_id,
                    action.device,
                    action.why,
                )
            elif isinstance(action, Ignore):
                log.debug("%s: ignored result %s from %s: %s", self.request, action.task_id, action.device, action.why)
            elif isinstance(action, Reauction):
                lot = (block, [Span(r, r + 1) for r in range(action.rows.start, action.rows.stop)], action.cols)
                awarded = self._auctions([lot])[0]
                self._perform(progress, block, x, out, progress.handle(Awarded(tuple(awarded), time.perf_counter())))
            elif isinstance(action, Fail):
                raise PlanningError(action.reason)

    # ------------------------------------------------------------ auction
    def _auctions(self, lots: list[tuple[FusedBlock, list[Span], Span]]) -> list[list[Task]]:
        """Real auction rounds, one per lot (a block's rows and columns), held at once
        (see :meth:`Auctioneer.rounds`), each awarded from its bids (no bid, no work)."""
        if not lots:
            return []
        started = time.perf_counter()
        candidates = set(self._online()) - self.failed
        awaited = (set(self.plan.devices) & candidates) or candidates
        rounds = self.auctioneer.rounds([(block, items) for block, items, _ in lots], candidates, awaited)
        awarded = []
        for held_round, (block, items, cols) in zip(rounds, lots, strict=True):
            won = _award(held_round.ordered(), len(items))
            self.auctioneer.announce(held_round, won)
            awarded.append(
                [
                    make_task(
                        self.held.chain.stages,
                        self.shapes,
                        block,
                        TileRegion(Span(items[s.start].start, items[s.stop - 1].stop), cols),
                        d,
                    )
                    for d, s in won.runs
                ]
            )
        self.timings.auction_s += time.perf_counter() - started
        answered = min(len(r.bids) for r in rounds)
        self.mark(ORCHESTRATOR, "auction", started, time.perf_counter(), f"{len(lots)} rounds, >= {answered} bids")
        return awarded

    # ------------------------------------------------------------ tasks
    def _input(self, task: Task, x: Tensor) -> Tensor:
        """The task's input tile, assembled from the pieces its graph names. Under a gather
        strategy every piece comes from the orchestrator, which holds the block's whole input."""
        region, whole = task.in_region, TileRegion.whole(x.shape[2], x.shape[3])
        tile = torch.empty(1, x.shape[1], region.height, region.width)
        for piece in task.inputs:
            if piece.source != ORCHESTRATOR:
                raise PlanningError(f"piece {piece.region} is held by {piece.source}: this runtime gathers every block")
            (rows, cols), (src_rows, src_cols) = piece.region.within(region), piece.region.within(whole)
            tile[:, :, rows, cols] = x[:, :, src_rows, src_cols]
        return tile

    def _send(self, block: FusedBlock, action: Send, x: Tensor) -> None:
        started = time.perf_counter()
        task, device = action.task, action.device
        tile = self._input(task, x)
        message = TaskMessage(
            self.request,
            action.task_id,
            self.orchestrator,
            self.held.chain.model_name,
            self.held.digest,
            (self.shapes[0].height, self.shapes[0].width),
            block,
            task.in_region,
            task.out_region,
            tile.numpy(),
        )
        self.prepare(device, block)
        self.publish(DEVICE_TASKS.build(device=device), encode(message))
        sent = time.perf_counter()
        self._sent[action.task_id] = (sent, block)
        self.used.add(device)
        self.timings.scatter_s += sent - started
        self.mark(ORCHESTRATOR, "prepare", started, sent, device, block, task.out_region)

    def _stitch(self, action: Stitch, result: ResultMessage, arrived: float, out: Tensor) -> None:
        started = time.perf_counter()
        region = action.task.out_region
        assert result.output is not None
        out[:, :, region.rows.start : region.rows.stop, region.cols.start : region.cols.stop] = torch.from_numpy(
            result.output
        )
        self.timings.merge_s += time.perf_counter() - started
        block = self._sent[action.task_id][1]
        self.mark(ORCHESTRATOR, "merge", started, time.perf_counter(), result.device, block, region)
        self._mark_device(result, action.task_id, region, arrived)

    def _mark_device(self, result: ResultMessage, task_id: str, region: TileRegion, arrived: float) -> None:
        """The device's link and CPU intervals of a task, from the times it reported.

        Its clock is only trusted between our send and our receipt: on real boards
        clocks drift by milliseconds, so its instants are clamped into that window.
        Instants out of order are a device bug, logged and not drawn.
        """
        sent, block = self._sent.pop(task_id)
        if self.timeline is None or result.timings is None:
            return
        arrived = max(arrived, sent)  # the result can beat the end of our own publish call
        t = result.timings
        instants = [t.received_at, t.started_at, t.computed_at]
        if instants != sorted(instants):
            log.warning("%s: %s reported its task instants out of order: %s", self.request, result.device, instants)
            return
        received, begun, computed = (min(max(i - self._wall_offset, sent), arrived) for i in instants)
        self.mark(result.device, "receive", sent, received, "", block, region)
        self.mark(result.device, "compute", begun, computed, "", block, region)
        self.mark(result.device, "send", computed, arrived, "", block, region)
