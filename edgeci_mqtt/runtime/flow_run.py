"""One ``flow`` inference: auction, one program per device, collect the last block, tail.

The orchestrator holds every block's round at once (bids priced with the output kept
on the device), awards the blocks in order with what each device holds after the block
before (:func:`edgeci_mqtt.planner.flow.flow_blocks`), and sends each device its
program with its image rows. From then on rows move between the devices; the
orchestrator only waits for the last block's tiles, stitches them and runs the tail.

Faults (:class:`FlowAttempt`, pure): a device that goes offline, reports an error or
refuses its program, or (with every device that still owes a tile) stays silent past the
attempt's deadline, fails the attempt. Its devices are told to drop the attempt's rows,
and the request is re-planned without the failed devices and restarted from the image,
under a new attempt id so that no stale row can mix in (after a missed deadline, with
twice the time: :func:`attempt_allowance`); after :data:`MAX_ATTEMPTS` the request fails
with a clear error.
"""

from __future__ import annotations

import functools
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.chain import ChainSpec
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion
from edgeci_mqtt.errors import InferenceError, PlanningError
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.planner.awas import Award, Bid, auction_items, make_bid
from edgeci_mqtt.planner.cluster import Link
from edgeci_mqtt.planner.costs import RowModel
from edgeci_mqtt.planner.environment import DeviceView, Environment
from edgeci_mqtt.planner.flow import flow_blocks
from edgeci_mqtt.planner.plan import BlockPlan, Plan
from edgeci_mqtt.planner.profile import DeviceProfile
from edgeci_mqtt.planner.tail import TailPlan, TailWork, placement_making_seconds
from edgeci_mqtt.runtime.inference import MAX_TASK_DEADLINE_S, POLL_S, Arrival, Run, RunSetup, task_allowance
from edgeci_mqtt.runtime.programs import DeviceProgram, device_programs
from edgeci_mqtt.text import brief
from edgeci_mqtt.timeline import ORCHESTRATOR
from edgeci_mqtt.wire import (
    DEVICE_TASKS,
    FinishRole,
    GoMessage,
    ProgramMessage,
    ProgramStep,
    Progress,
    ReleaseMessage,
    ResultMessage,
    RowsMessage,
    StepDone,
    StepReport,
    TailRole,
    VectorMessage,
    encode,
)

__all__ = ["MAX_ATTEMPTS", "FlowAttempt", "FlowRun", "attempt_allowance", "finish_logits"]

log = logging.getLogger("edgeci.orchestrator")

MAX_ATTEMPTS = 3
REPORTS_S = 0.5
"""How long a late attempt waits for its devices to say how far they got (a device answers
from its message thread, whatever its worker is doing)."""
EXPIRY_MARGIN_S = 30.0
"""A device drops an attempt's rows this long after the attempt's deadline (counted from when
its program arrived), released or not: never while the orchestrator still waits for it."""


Owed = tuple[str, TileRegion | Span]
"""What the orchestrator waits for, by sender: a final tile (its region), a slice of the
tail's first layer or the logits (their features)."""


@dataclass
class FlowAttempt:
    """What one attempt still waits for, as a pure state machine.

    ``owed`` holds what has not arrived yet, by sender; what has is in ``arrived``.
    :meth:`result` and :meth:`tick` return the devices to give up on and why (empty:
    carry on); a non-empty answer ends the attempt.
    """

    devices: frozenset[str]
    owed: set[Owed]
    deadline: float
    channels: int
    arrived: dict[Owed, NDArray[np.float32]] = field(default_factory=dict)
    unfinished: dict[int, set[str]] = field(default_factory=dict)
    """Behind a barrier: by boundary, the devices whose step ending there is not done yet."""

    @property
    def done(self) -> bool:
        return not self.owed

    def step_done(self, message: StepDone) -> list[int]:
        """A device finished a step: the boundaries every device is now done with (say go)."""
        waiting = self.unfinished.get(message.boundary)
        if waiting is None or message.device not in waiting:
            return []
        waiting.discard(message.device)
        if waiting:
            return []
        del self.unfinished[message.boundary]
        return [message.boundary]

    def result(self, result: ResultMessage | RowsMessage | VectorMessage) -> tuple[set[str], str]:
        """Take a message: something owed (kept), an error (its device failed), or anything else (ignored)."""
        if isinstance(result, ResultMessage):
            if result.device in self.devices and result.error:
                return {result.device}, f"{result.device}: {brief(result.error, 300)}"
            return set(), ""
        key: Owed
        if isinstance(result, RowsMessage):
            key, array = (result.sender, result.region), result.rows.array
            expected: tuple[int, ...] = (1, self.channels, result.region.height, result.region.width)
        else:
            key, array, expected = (result.sender, result.features), result.values.array, (1, result.features.size)
        if key not in self.owed:
            return set(), ""
        if array.shape != expected or array.dtype != np.float32:
            got = f"{array.dtype}{list(array.shape)}"
            return {result.sender}, f"{result.sender} sent {got} for {key[1]}, expected float32{list(expected)}"
        self.owed.discard(key)
        self.arrived[key] = array
        return set(), ""

    def tick(self, now: float, online: set[str]) -> tuple[set[str], str]:
        gone = set(self.devices) - online
        if gone:
            return gone, f"{', '.join(sorted(gone))} went offline"
        if now > self.deadline and self.owed:
            silent = {d for d, _ in self.owed}
            return silent, f"{', '.join(sorted(silent))} still owed results at the deadline"
        return set(), ""


def program_items(program: DeviceProgram) -> list[ProgramStep | TailRole | FinishRole]:
    """A program's items in the order a device runs them (the index a :class:`Progress` names)."""
    tail, finish = program.tail, program.finish
    return [*program.steps, *([tail] if tail else []), *([finish] if finish else [])]


def downstream_first(programs: dict[str, DeviceProgram]) -> list[str]:
    """The devices in the order their programs should go out: the latest first step first
    (the tail's and the finisher's, with no step, before all), so that a device's program
    is in hand before the rows from its upstream neighbours, which start as soon as they
    have theirs (rows that overtake their program wait in a small holding area)."""
    return sorted(programs, key=lambda d: (-programs[d].steps[0].block.start if programs[d].steps else -(1 << 30), d))


def _sources(item: ProgramStep | TailRole | FinishRole) -> set[str]:
    if isinstance(item, FinishRole):
        return {s.source for s in item.slices}
    return {p.source for p in item.inputs}


def blame(
    programs: dict[str, DeviceProgram], reports: dict[str, Progress], orchestrator: str, barrier: bool
) -> set[str]:
    """Who held a late attempt up, from what each device said when it was released.

    A device that did not answer (stopped, gone quiet, or hostile) is to blame, and so is
    one that had every piece of its next item and had not finished it (slow, or never
    computing). A device that was waiting for others is not, if its claim holds: the
    senders it names are ones its next item reads (the orchestrator only for a go behind
    a barrier: its image came in the program). A claim on a sender that says it finished
    cannot be settled from here (rows lost on the way, or one of them lying): both are
    blamed, for a short hold. Nobody is blamed when every device finished: the lateness
    was the orchestrator's or the broker's."""
    finished = {d for d, r in reports.items() if d in programs and r.item >= len(program_items(programs[d]))}
    blamed = set()
    for device, program in programs.items():
        items, report = program_items(program), reports.get(device)
        if report is None or report.item < 0:
            blamed.add(device)  # silent, or its program never reached it
            continue
        if report.item >= len(items):
            continue
        claims = set(report.waiting_for)
        readable = _sources(items[report.item]) - {device} | ({orchestrator} if barrier else set())
        readable -= set() if barrier else {orchestrator}
        if not claims or not claims <= readable:
            blamed.add(device)
        elif claims & finished:
            blamed |= {device, *(claims & finished)}
    return blamed


def finish_logits(
    tail: TailPlan, arrived: dict[Owed, NDArray[np.float32]], chain: StageChain, out_shape: FeatureShape
) -> Tensor:
    """The logits from what reached the orchestrator: the final tiles (stitched, then the
    whole tail here), the first layer's slices (the rest of the tail here), or the logits."""
    with torch.inference_mode():
        if tail.on_orchestrator:
            whole = TileRegion.whole(out_shape.height, out_shape.width)
            out = torch.empty(1, out_shape.channels, out_shape.height, out_shape.width)
            for (_, region), tile in arrived.items():
                assert isinstance(region, TileRegion)
                rows, cols = region.within(whole)
                out[:, :, rows, cols] = torch.from_numpy(tile)
            return chain.tail(out)
        if tail.finisher == ORCHESTRATOR:
            ordered = sorted(arrived.items(), key=lambda item: item[0][1].start)  # type: ignore[union-attr]
            return chain.tail_parts.finish(torch.from_numpy(np.concatenate([a for _, a in ordered], axis=1)))
        return torch.from_numpy(next(iter(arrived.values())))


@functools.lru_cache(maxsize=64)
def _awarded(
    chain: ChainSpec,
    rows: RowModel,
    env: Environment,
    lots: tuple[tuple[FusedBlock, tuple[Span, ...], tuple[Bid, ...]], ...],
    place: bool,
    keep: TailPlan | None,
) -> tuple[tuple[BlockPlan, ...], tuple[Award, ...], TailPlan]:
    """:func:`flow_blocks`, remembered: the awards depend on the bids and the cluster only,
    and idle devices bid the same for every request (awarding VGG-16's eight blocks takes a
    0.25-CPU orchestrator over 100 ms)."""
    blocks, awards, tail, _ = flow_blocks(chain, rows, env, lots, place, keep)
    return tuple(blocks), tuple(awards), tail


class FlowRun(Run):
    """Runs ``plan`` (a ``flow`` plan: its blocks and who it expects to work) for one request."""

    def __init__(
        self,
        setup: RunSetup,
        profile: DeviceProfile,
        broker_link: Link,
        replan: Callable[[list[DeviceView]], Plan] | None = None,
    ) -> None:
        """``profile`` and ``broker_link``: the orchestrator's own, for the awards' environment.
        ``replan(devices)``: a fixed plan for the devices left (whole requests); None: hold
        auctions for the plan's blocks (``flow``)."""
        super().__init__(setup)
        self.replan = replan
        self.profile, self.broker_link = profile, broker_link

    # ------------------------------------------------------------ public
    def run(self, x: Tensor) -> Tensor:
        reasons = []
        late = 0  # attempts whose deadline passed
        for attempt in range(1, MAX_ATTEMPTS + 1):
            self.check_wanted()
            run_id = f"{self.request}.{attempt}"
            try:
                return self._attempt(run_id, x, late)
            except _AttemptFailed as failure:
                late += failure.late
                self.give_up_on(failure.devices, failure.why, gone=failure.gone)
                self.timings.recovered_tasks += 1
                reasons.append(failure.why)
                log.warning(
                    "%s: attempt %d failed (%s); re-planning without %s",
                    self.request,
                    attempt,
                    failure.why,
                    ", ".join(sorted(failure.devices)),
                )
        raise InferenceError(f"flow gave up after {MAX_ATTEMPTS} attempts: {'; '.join(reasons)}")

    # ------------------------------------------------------------ one attempt
    def _attempt(self, run_id: str, x: Tensor, late: int) -> Tensor:
        """One attempt, to the logits (raises :class:`_AttemptFailed` to re-plan); ``late``:
        how many attempts before it ran past their deadline."""
        views = [v for v in self.devices() if v.name not in self.failed]
        views = [v for v in views if v.name not in self.mail.silence] or views  # work for those who answer
        if not views:
            raise InferenceError("no capable device remains for this inference")
        plan = self._award(views) if self.replan is None else self.replan(views)
        self.used |= set(plan.devices)
        programs = device_programs(plan, self.orchestrator)
        last = plan.blocks[-1]
        out_shape = self.shapes[last.block.stop]
        owed: set[Owed]
        if plan.tail.on_orchestrator:
            owed = {(t.device, t.out_region) for t in last.tasks}
        elif plan.tail.parts and plan.tail.finisher == ORCHESTRATOR:
            owed = set(plan.tail.parts)
        else:
            owed = {(plan.tail.finisher, Span(0, self.held.chain.tail_parts.classes))}
        allowance = attempt_allowance(plan.predicted_s + self.backlog_s, self.min_allowance_s, late)
        with self.mail.open(run_id) as box:
            started = time.perf_counter()
            state = FlowAttempt(frozenset(programs), owed, started + allowance, out_shape.channels)
            if plan.barrier:
                state.unfinished = {b.block.stop: set(b.devices) for b in plan.blocks[:-1]}
            readers = {b.block.start: set(b.devices) for b in plan.blocks[1:]}
            try:
                for device, program in programs.items():  # stage weights first: they are the long sends
                    for step in program.steps:
                        self.prepare(device, step.block)
                for device in downstream_first(programs):  # a program ahead of the rows its device reads
                    self._send_program(run_id, device, programs[device], plan, x, allowance + EXPIRY_MARGIN_S)
                self.timings.scatter_s += time.perf_counter() - started
                self.mark(ORCHESTRATOR, "prepare", started, time.perf_counter(), f"{len(programs)} programs")
                self._wait(state, box, lambda boundary: self._go(run_id, readers[boundary], boundary))
            except _AttemptFailed as failure:
                if not failure.late:
                    self._release(run_id, programs, "attempt failed")
                    raise
                self._release(run_id, programs, "late", report=True)
                reports = self._reports(box, set(programs))
                blamed = blame(programs, reports, self.orchestrator, plan.barrier)
                why = failure.why if blamed else f"{failure.why}, though every device says it finished"
                raise _AttemptFailed(blamed, why, late=True) from None
            except BaseException:
                self._release(run_id, programs, "attempt failed")
                raise
        self.timings.wait_s += time.perf_counter() - started
        return self._finish(plan, state, out_shape)

    def _finish(self, plan: Plan, state: FlowAttempt, out_shape: FeatureShape) -> Tensor:
        started = time.perf_counter()
        logits = finish_logits(plan.tail, state.arrived, self.held.chain, out_shape)
        self.timings.tail_s = time.perf_counter() - started
        self.mark(ORCHESTRATOR, "tail", started, time.perf_counter(), self._tail_note(plan))
        return logits

    @staticmethod
    def _tail_note(plan: Plan) -> str:
        tail = plan.tail
        if tail.on_orchestrator:
            return ""
        if tail.parts:
            return f"first layer split over {', '.join(d for d, _ in tail.parts)}, finished on {tail.finisher}"
        return f"tail on {tail.finisher}"

    def _award(self, views: list[DeviceView]) -> Plan:
        """Every block's round at once, then the flow awards in block order."""
        started = time.perf_counter()
        lots = [(b.block, list(auction_items(self.shapes[b.block.stop]))) for b in self.plan.blocks]
        candidates = {v.name for v in views}
        awaited = (set(self.plan.devices) & candidates) or candidates
        rounds = self.auctioneer.rounds(lots, candidates, awaited, flow=True)
        views = [v for v in views if v.name not in self.mail.silence] or views  # found silent now: no tail either
        env = Environment(tuple(views), self.profile, self.broker_link)
        chain = self.held.spec(*self.input_hw)
        rows = self.held.row_model(*self.input_hw)
        for (block, items), held_round in zip(lots, rounds, strict=True):
            if not held_round.bids:  # nobody answered in time (all busy): price from what they announced
                log.warning(
                    "%s: no bid for block %s in time; pricing it from the devices' profiles", self.request, block
                )
                held_round.bids.update({v.name: make_bid(v, rows, block, items, flow=True) for v in views})
        bids = tuple((block, tuple(items), r.ordered()) for (block, items), r in zip(lots, rounds, strict=True))
        try:
            place = self.plan.strategy.places_tail
            blocks, awards, tail = _awarded(chain, rows, env, bids, place, self.tails.get(self.held.digest))
        except PlanningError as exc:
            raise InferenceError(f"flow cannot be awarded: {exc}") from exc
        self.tails[self.held.digest] = tail  # the next request keeps it unless another is clearly cheaper
        for held_round, won in zip(rounds, awards, strict=True):
            self.auctioneer.announce(held_round, won)
        self.timings.auction_s += time.perf_counter() - started
        self.mark(ORCHESTRATOR, "auction", started, time.perf_counter(), f"{len(lots)} rounds")
        making = placement_making_seconds(env, TailWork.of(chain.tail_work), tail) if place else 0.0
        plan = Plan(
            self.plan.strategy,
            chain.model,
            chain.shapes[0],
            tuple(blocks),
            chain.tail_work,
            self.plan.predicted_s + making,  # the plan's, and the tail weights its devices must make
            True,
            tail,
            self.plan.barrier,
            self.plan.compress,
        )
        self.used |= set(plan.devices)
        return plan

    def _send_program(
        self, run_id: str, device: str, program: DeviceProgram, plan: Plan, x: Tensor, expires_s: float
    ) -> None:
        steps = program.steps
        image_region = next((p.region for s in steps for p in s.inputs if p.source == self.orchestrator), None)
        image = None
        if image_region is not None:
            rows, cols = image_region.within(TileRegion.whole(x.shape[2], x.shape[3]))
            image = x[:, :, rows, cols].contiguous().numpy()
        message = ProgramMessage(
            run_id,
            self.orchestrator,
            self.held.chain.model_name,
            self.held.digest,
            self.input_hw,
            steps,
            expires_s,
            image_region,
            image,
            program.tail,
            program.finish,
            plan.barrier,
            plan.compress,
            self.timeline is not None,
            program.prepare,
        )
        self.publish(DEVICE_TASKS.build(device=device), encode(message))

    def _wait(self, state: FlowAttempt, box: queue.Queue[Arrival], go: Callable[[int], None]) -> None:
        """Until the attempt has all it is owed. What has arrived is taken before the clock is
        read: a busy orchestrator must not call late what is already in its box."""
        while not state.done:
            self.check_wanted()  # raises: the attempt's rows are released
            try:
                _, result = box.get_nowait()
            except queue.Empty:
                online = {v.name for v in self.devices()}
                lost, why = state.tick(time.perf_counter(), online)
                if lost:
                    gone = not lost & online  # out of the table (offline, or held out since by a failure elsewhere)
                    raise _AttemptFailed(lost, why, late=time.perf_counter() > state.deadline, gone=gone) from None
                try:
                    _, result = box.get(timeout=POLL_S)
                except queue.Empty:
                    continue
            if isinstance(result, StepDone):
                for boundary in state.step_done(result):
                    go(boundary)
            elif isinstance(result, StepReport):
                self._mark_report(result, state)
            elif not isinstance(result, Progress):  # a progress answers a release: not for this attempt
                lost, why = state.result(result)
                if lost:
                    raise _AttemptFailed(lost, why, late=time.perf_counter() > state.deadline)

    def _reports(self, box: queue.Queue[Arrival], devices: set[str]) -> dict[str, Progress]:
        """The :class:`Progress` each device sends when a late attempt is released, for up to
        :data:`REPORTS_S` (a device that does not answer by then is blamed)."""
        reports: dict[str, Progress] = {}
        deadline = time.perf_counter() + REPORTS_S
        while devices - set(reports) and (left := deadline - time.perf_counter()) > 0:
            try:
                _, message = box.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(message, Progress) and message.device in devices:
                reports[message.device] = message
        return reports

    def _mark_report(self, report: StepReport, state: FlowAttempt) -> None:
        """A device's item on the timeline: its clock is trusted only between the request's
        arrival and now (clocks on boards drift), instants out of order are dropped."""
        if self.timeline is None or report.device not in state.devices:
            return
        now = time.perf_counter()
        instants = [report.started_at, report.computed_at, report.sent_at]
        if instants != sorted(instants):
            log.warning("%s: %s reported its step instants out of order: %s", self.request, report.device, instants)
            return
        started, computed, sent = (min(max(i - self._wall_offset, self.origin), now) for i in instants)
        kind = "compute" if report.block is not None else "tail"
        self.mark(report.device, kind, started, computed, "", report.block, report.region)
        if sent > computed:
            self.mark(report.device, "send", computed, sent, "", report.block, report.region)

    def _go(self, run_id: str, devices: set[str], boundary: int) -> None:
        """Behind a barrier: every device finished the blocks ending at ``boundary``."""
        for device in sorted(devices):
            self.publish(DEVICE_TASKS.build(device=device), encode(GoMessage(run_id, self.orchestrator, boundary)))

    def _release(self, run_id: str, programs: dict[str, DeviceProgram], reason: str, report: bool = False) -> None:
        """Tell every device of the attempt to drop its rows (a device that is gone drops them
        when they expire); ``report``: and to say how far it got first."""
        for device in programs:
            try:
                release = ReleaseMessage(run_id, self.orchestrator, reason, report)
                self.publish(DEVICE_TASKS.build(device=device), encode(release))
            except Exception as exc:  # the broker may be gone too; expiry covers it
                log.warning("%s: cannot release %s on %s: %s", self.request, run_id, device, exc)


class _AttemptFailed(Exception):
    def __init__(self, devices: set[str], why: str, late: bool = False, gone: bool = False) -> None:
        super().__init__(why)
        self.devices, self.why, self.late, self.gone = devices, why, late, gone


def attempt_allowance(expected_s: float, min_allowance_s: float, late: int) -> float:
    """How long an attempt waits for what it is owed: the :func:`task_allowance` of the
    seconds predicted for it (its plan and the work already handed out), doubled for each
    earlier attempt that ran past its deadline.

    A deadline is a prediction; the devices that missed it were online, so they may have
    been busy rather than lost (making tail rows they had never held, or behind other
    requests' work: seen on hetero4 streams, where a request then lost all three attempts
    at the same six seconds). The next attempt, re-planned without them, allows more."""
    return min(MAX_TASK_DEADLINE_S, task_allowance(expected_s, min_allowance_s) * 2**late)
