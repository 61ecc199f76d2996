"""One distributed inference, block by block: auction, scatter, gather, stitch, recover.

A lost task (its device's will fired, it went silent past a deadline derived from its
own estimate, or it answered with an error) is re-auctioned among the devices that
remain, row by row, and the result is still exact. Late and duplicate results are
ignored by task id.
"""

from __future__ import annotations

import logging
import math
import queue
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion
from edgeci_mqtt.errors import PlanningError, WireError
from edgeci_mqtt.planner.awas import Bid, auction_items, award
from edgeci_mqtt.planner.costs import make_task
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.planner.plan import BlockPlan, Plan, Task
from edgeci_mqtt.runtime.models_held import HeldModel
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval
from edgeci_mqtt.wire import (
    AuctionCall,
    Award,
    BidMessage,
    ResultMessage,
    TaskMessage,
    Topics,
    decode_tensor,
    encode,
    encode_tensor,
    region_list,
)

__all__ = ["InferenceRun", "Mailboxes", "Timings"]

log = logging.getLogger("edgeci.orchestrator")

MIN_TASK_DEADLINE_S = 3.0
MAX_TASK_DEADLINE_S = 300.0
DEADLINE_FACTOR = 5.0


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


@dataclass
class Mailboxes:
    """Where the orchestrator's dispatcher drops bids and results for the running inference."""

    results: queue.Queue[tuple[float, ResultMessage]] = field(default_factory=queue.Queue)  # (arrived, result)
    bids: dict[str, queue.Queue[BidMessage]] = field(default_factory=dict)


@dataclass
class _Pending:
    task: Task
    device: str
    deadline: float
    cols: Span
    sent: float  # perf_counter once published
    block: FusedBlock  # for the timeline


class InferenceRun:
    """Runs ``plan`` for one request. ``devices()`` gives the live candidate devices;
    ``prepare(device, block)`` runs before a task is sent (weights for fetching devices).
    With ``trace``, ``timeline`` collects what every resource did, in seconds from
    ``origin`` (a ``perf_counter`` value: when the request arrived)."""

    def __init__(
        self,
        *,
        orchestrator: str,
        request: str,
        held: HeldModel,
        plan: Plan,
        shapes: list[FeatureShape],
        devices: Callable[[], list[DeviceView]],
        publish: Callable[[str, bytes], None],
        prepare: Callable[[str, FusedBlock], None],
        mail: Mailboxes,
        auction_s: float,
        auctioned: bool,
        origin: float,
        trace: bool = False,
    ) -> None:
        self.orchestrator, self.request, self.held, self.plan, self.shapes = orchestrator, request, held, plan, shapes
        self.devices, self.publish, self.prepare, self.mail = devices, publish, prepare, mail
        self.auction_window_s, self.auctioned = auction_s, auctioned
        self.timings = Timings()
        self.failed: set[str] = set()
        self.used: set[str] = set()
        self.origin = origin
        self.timeline: list[Interval] | None = [] if trace else None
        self._wall_offset = time.time() - time.perf_counter()

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

    # ------------------------------------------------------------ public
    def run(self, x: Tensor) -> Tensor:
        on_devices = [b for b in self.plan.blocks if b.placement != "orchestrator"]
        if self.auctioned:  # every block's round at once: one round trip, not one per block
            awarded = self._auctions([(b.block, self._items(b.block), self._width(b.block)) for b in on_devices])
        else:
            awarded = [list(b.tasks) for b in on_devices]
        awards = iter(awarded)
        for block_plan in self.plan.blocks:
            x = self._block(block_plan, x, [] if block_plan.placement == "orchestrator" else next(awards))
        started = time.perf_counter()
        with torch.inference_mode():
            logits = self.held.chain.tail(x)
        self.timings.tail_s = time.perf_counter() - started
        self.mark(ORCHESTRATOR, "tail", started, started + self.timings.tail_s)
        return logits

    # ------------------------------------------------------------ blocks
    def _candidates(self) -> list[DeviceView]:
        return [d for d in self.devices() if d.name not in self.failed]

    def _items(self, block: FusedBlock) -> list[Span]:
        return list(auction_items(self.shapes[block.stop]))

    def _width(self, block: FusedBlock) -> Span:
        return Span(0, self.shapes[block.stop].width)

    def _block(self, block_plan: BlockPlan, x: Tensor, tasks: list[Task]) -> Tensor:
        """Run one block; ``tasks`` are its awarded (or planned) tasks, if on devices."""
        block = block_plan.block
        kernels = self.held.chain.kernels
        if block_plan.placement == "orchestrator":
            started = time.perf_counter()
            out_shape = self.shapes[block.stop]
            whole_out = TileRegion.whole(out_shape.height, out_shape.width)
            with torch.inference_mode():
                out = run_block_tile(
                    kernels,
                    self.shapes,
                    block,
                    x,
                    TileRegion.whole(x.shape[2], x.shape[3]),
                    whole_out,
                )
            self.timings.gateway_s += time.perf_counter() - started
            self.mark(ORCHESTRATOR, "gateway", started, time.perf_counter(), block=block, region=whole_out)
            return out
        out_shape = self.shapes[block.stop]
        if not tasks:
            raise PlanningError(f"block {block} is on devices but has no tasks")
        out = torch.empty(1, out_shape.channels, out_shape.height, out_shape.width)
        live = {d.name for d in self._candidates()}
        if self.auctioned and any(t.device not in live for t in tasks):  # a winner left since the auction
            tasks = self._auctions([(block, self._items(block), self._width(block))])[0]
        pull = block_plan.dispatch == "pull"
        waiting: deque[Task] = deque(tasks if pull else [])
        pending: dict[str, _Pending] = {}
        block_compute = 0.0
        if pull:
            for view in self._candidates():
                if waiting:
                    self._send(block, waiting.popleft(), view.name, x, pending)
        else:
            for task in tasks:
                self._send(block, task, task.device, x, pending)
        started = time.perf_counter()
        while pending or waiting:
            try:
                arrived, result = self.mail.results.get(timeout=0.05)
            except queue.Empty:
                result = None
            if result is not None:
                done = self._accept(result, arrived, pending, out)
                if done is not None:
                    block_compute = max(block_compute, done)
                    if pull and waiting:
                        self._send(block, waiting.popleft(), result.device, x, pending)
            lost = self._lost(pending)
            for entry in lost:
                del pending[entry[0]]
            for _, item in lost:
                self.timings.recovered_tasks += 1
                if pull:
                    waiting.appendleft(item.task)
                    idle = self._idle(pending)
                    if idle and waiting:
                        self._send(block, waiting.popleft(), idle, x, pending)
                else:
                    rows = item.task.out_region.rows
                    lot = (block, [Span(r, r + 1) for r in range(rows.start, rows.stop)], item.cols)
                    for task in self._auctions([lot])[0]:
                        self._send(block, task, task.device, x, pending)
            if pull and waiting and not pending:
                idle = self._idle(pending)
                if idle is None:
                    raise PlanningError("no capable device remains for this inference")
                self._send(block, waiting.popleft(), idle, x, pending)
        self.timings.wait_s += time.perf_counter() - started
        self.timings.compute_s += block_compute
        return out

    def _idle(self, pending: dict[str, _Pending]) -> str | None:
        busy = {p.device for p in pending.values()}
        return next((d.name for d in self._candidates() if d.name not in busy), None)

    # ------------------------------------------------------------ auction
    def _auctions(self, lots: list[tuple[FusedBlock, list[Span], Span]]) -> list[list[Task]]:
        """Real auction rounds, one per lot (a block's rows and columns), held at once.

        Every call goes out to every candidate first. Each round then waits, until
        the window closes, for the bids of the devices the plan expects to win work
        (all candidates if it expects none of them); bids that others have sent by
        then count as well. Waiting for a device the plan leaves idle would cost
        every inference its slowest bidder's reply time (on hetero8, a 2 % CPU device
        answers 100+ ms after the rest) for a bid that almost never wins.
        """
        if not lots:
            return []
        started = time.perf_counter()
        candidates = {d.name for d in self._candidates()}
        if not candidates:
            raise PlanningError("no capable device remains for this inference")
        awaited = (set(self.plan.devices) & candidates) or candidates
        rounds: list[tuple[str, queue.Queue[BidMessage]]] = []
        bids: list[dict[str, Bid]] = [{} for _ in lots]
        deadline = started + self.auction_window_s
        try:
            for block, items, _ in lots:  # registered one by one: a failed publish leaks no mailbox
                rounds.append(self._call(block, items))
            for (_, box), (_, items, _), received in zip(rounds, lots, bids, strict=True):
                while awaited - received.keys() and (remaining := deadline - time.perf_counter()) > 0:
                    try:
                        message = box.get(timeout=remaining)
                    except queue.Empty:
                        break
                    _take_bid(message, len(items), candidates, received)
                for _ in range(box.qsize()):  # what others sent by now counts too; wait for nothing more
                    _take_bid(box.get_nowait(), len(items), candidates, received)
        finally:
            for round_id, _ in rounds:
                self.mail.bids.pop(round_id, None)
        awarded = [
            self._award(round_id, block, items, cols, received)
            for (round_id, _), (block, items, cols), received in zip(rounds, lots, bids, strict=True)
        ]
        self.timings.auction_s += time.perf_counter() - started
        answered = min(len(b) for b in bids)
        self.mark(ORCHESTRATOR, "auction", started, time.perf_counter(), f"{len(lots)} rounds, >= {answered} bids")
        return awarded

    def _call(self, block: FusedBlock, items: list[Span]) -> tuple[str, queue.Queue[BidMessage]]:
        round_id = uuid.uuid4().hex[:12]
        box: queue.Queue[BidMessage] = queue.Queue()
        self.mail.bids[round_id] = box
        call = AuctionCall(
            round_id,
            self.orchestrator,
            self.held.chain.model_name,
            [self.shapes[0].height, self.shapes[0].width],
            [block.start, block.stop],
            [[s.start, s.stop] for s in items],
            self.auction_window_s * 1e3,
        )
        self.publish(Topics.auction_call(round_id), encode(call))
        return round_id, box

    def _award(
        self, round_id: str, block: FusedBlock, items: list[Span], cols: Span, bids: dict[str, Bid]
    ) -> list[Task]:
        won = award(list(bids.values()), len(items))  # no bid, no work
        self.publish(
            Topics.auction_award(round_id), encode(Award(round_id, [[d, s.start, s.stop] for d, s in won.runs]))
        )
        return [
            make_task(
                self.held.chain.stages,
                self.shapes,
                block,
                TileRegion(Span(items[s.start].start, items[s.stop - 1].stop), cols),
                d,
            )
            for d, s in won.runs
        ]

    # ------------------------------------------------------------ tasks
    def _send(self, block: FusedBlock, task: Task, device: str, x: Tensor, pending: dict[str, _Pending]) -> None:
        started = time.perf_counter()
        task_id = uuid.uuid4().hex[:12]
        r, c = task.in_region.rows, task.in_region.cols
        tile = x[:, :, r.start : r.stop, c.start : c.stop].contiguous()
        message = TaskMessage(
            self.request,
            task_id,
            self.orchestrator,
            self.held.chain.model_name,
            self.held.digest,
            [self.shapes[0].height, self.shapes[0].width],
            [block.start, block.stop],
            region_list(task.in_region),
            region_list(task.out_region),
            encode_tensor(tile),
        )
        view = next((d for d in self.devices() if d.name == device), None)
        predicted = self._predict(view, block, task) if view else 1.0
        allowed = min(MAX_TASK_DEADLINE_S, max(MIN_TASK_DEADLINE_S, DEADLINE_FACTOR * predicted))
        self.prepare(device, block)
        self.publish(Topics.device_tasks(device), encode(message))
        sent = time.perf_counter()
        pending[task_id] = _Pending(task, device, sent + allowed, task.out_region.cols, sent, block)
        self.used.add(device)
        self.timings.scatter_s += sent - started
        self.mark(ORCHESTRATOR, "prepare", started, sent, device, block, task.out_region)

    def _predict(self, view: DeviceView, block: FusedBlock, task: Task) -> float:
        rows = self.held.row_model(self.shapes[0].height, self.shapes[0].width)
        r = task.out_region.rows
        return float(rows.strip_seconds(view, block, np.array([r.start]), np.array([r.stop]))[0])

    def _accept(self, result: ResultMessage, arrived: float, pending: dict[str, _Pending], out: Tensor) -> float | None:
        """Stitch a result if it is the one we wait for; returns its compute time."""
        entry = pending.get(result.task)
        if result.request != self.request or entry is None:
            log.debug("%s: ignored a late or unknown result %s from %s", self.request, result.task, result.device)
            return None
        if result.device != entry.device:
            log.warning(
                "%s: result %s came from %s, not %s: ignored", self.request, result.task, result.device, entry.device
            )
            return None
        if result.error:
            log.warning("%s: %s failed task %s: %s", self.request, result.device, result.task, result.error)
            entry.deadline = 0.0  # recovered by _lost
            self.failed.add(result.device)
            return None
        started = time.perf_counter()
        region = entry.task.out_region
        try:
            tile = decode_tensor(result.output, "result.output")
        except WireError as exc:
            log.warning("%s: bad result %s from %s: %s", self.request, result.task, result.device, exc)
            entry.deadline = 0.0
            return None
        expected = (1, out.shape[1], region.height, region.width)
        if tuple(tile.shape) != expected or tile.dtype != torch.float32 or result.out_region != region_list(region):
            log.warning(
                "%s: result %s from %s has shape %s, expected %s",
                self.request,
                result.task,
                result.device,
                tuple(tile.shape),
                expected,
            )
            entry.deadline = 0.0
            return None
        out[:, :, region.rows.start : region.rows.stop, region.cols.start : region.cols.stop] = tile
        del pending[result.task]
        self.timings.merge_s += time.perf_counter() - started
        self.mark(ORCHESTRATOR, "merge", started, time.perf_counter(), result.device, entry.block, region)
        self._mark_device(result, entry, arrived)
        compute = result.timings.get("compute_s", 0.0)
        return float(compute) if isinstance(compute, int | float) and math.isfinite(compute) else 0.0

    def _mark_device(self, result: ResultMessage, entry: _Pending, arrived: float) -> None:
        """The device's link and CPU intervals of a task, from the times it reported.

        Its clock is only trusted between our send and our receipt: on real boards
        clocks drift by milliseconds, so its instants are clamped into that window.
        Instants out of order are a device bug, logged and not drawn.
        """
        if self.timeline is None:
            return
        instants = []
        for key in ("received_at", "started_at", "computed_at"):
            value = result.timings.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                return
            instants.append(float(value))
        if instants != sorted(instants):
            log.warning("%s: %s reported its task instants out of order: %s", self.request, result.device, instants)
            return
        received, started, computed = (min(max(t - self._wall_offset, entry.sent), arrived) for t in instants)
        block, region = entry.block, entry.task.out_region
        self.mark(entry.device, "receive", entry.sent, received, "", block, region)
        self.mark(entry.device, "compute", started, computed, "", block, region)
        self.mark(entry.device, "send", computed, arrived, "", block, region)

    def _lost(self, pending: dict[str, _Pending]) -> list[tuple[str, _Pending]]:
        """Tasks whose device went offline, failed, or is silent past its deadline."""
        now = time.perf_counter()
        online = {d.name for d in self.devices()}
        lost = []
        for task_id, entry in pending.items():
            if entry.device not in online or entry.device in self.failed or now > entry.deadline:
                reason = "offline" if entry.device not in online else "silent or failed"
                log.warning(
                    "%s: task %s on %s lost (%s); re-auctioning it", self.request, task_id, entry.device, reason
                )
                self.failed.add(entry.device)
                lost.append((task_id, entry))
        return lost


def _take_bid(message: BidMessage, count: int, candidates: set[str], into: dict[str, Bid]) -> None:
    bid = _valid_bid(message, count)
    if bid is not None and bid.device in candidates:
        into[bid.device] = bid


def _valid_bid(message: BidMessage, count: int) -> Bid | None:
    values = [*message.alone_s, *message.extend_s, message.queue_s]
    if len(message.alone_s) != count or len(message.extend_s) != count:
        log.warning(
            "bid from %s has %d/%d prices for %d items: ignored",
            message.device,
            len(message.alone_s),
            len(message.extend_s),
            count,
        )
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e6 for v in values):
        log.warning("bid from %s has prices that are not finite non-negative numbers: ignored", message.device)
        return None
    return Bid(
        message.device, float(message.queue_s), tuple(map(float, message.alone_s)), tuple(map(float, message.extend_s))
    )
