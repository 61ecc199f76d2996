"""One request on the cluster, under any strategy: attempts of its plan until the answer.

Each attempt compiles the plan into every holder's work
(:func:`~edgeci_mqtt.orchestrator.programs.compile_plan`), and the pure
:class:`~edgeci_mqtt.orchestrator.attempt.Attempt` decides what happens; this module is its
edge: it stamps events with the clock and the devices online, publishes programs, rows,
go-aheads and releases, keeps what arrives in the request's
:class:`~edgeci_mqtt.orchestrator.holdings.Holdings`, computes what the plan keeps on the
orchestrator, and records the traced timeline. An attempt that ends in a restart is
re-planned without the devices it gave up, from the boundary it says, under a new program
id so that no stale row can mix in (after a missed deadline, with twice the time:
:func:`attempt_allowance`); after :data:`MAX_ATTEMPTS` the request fails with a clear error.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import InferenceError, PlanningError
from edgeci_mqtt.models.held import HeldModel
from edgeci_mqtt.orchestrator.attempt import (
    Action,
    Attempt,
    Begin,
    Compute,
    Computed,
    DeviceFailed,
    Event,
    Fail,
    Finish,
    GiveUp,
    Go,
    Ignore,
    Keep,
    Release,
    Reported,
    Restart,
    SendProgram,
    SendRows,
    StepFinished,
    Tick,
    TileArrived,
    VectorArrived,
)
from edgeci_mqtt.orchestrator.auction import Auctioneer
from edgeci_mqtt.orchestrator.awarding import flow_plan, gather_plan
from edgeci_mqtt.orchestrator.holdings import Holdings
from edgeci_mqtt.orchestrator.mailboxes import Box, Inbox, Mailboxes
from edgeci_mqtt.orchestrator.penalties import Penalties
from edgeci_mqtt.orchestrator.programs import Compiled, Forward, compile_plan
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.planner.tail import TailPlan
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval
from edgeci_mqtt.wire import (
    DEVICE_ROWS,
    DEVICE_TASKS,
    Failure,
    GoMessage,
    PackedArray,
    ProgramMessage,
    ProgramStep,
    Progress,
    ReleaseMessage,
    RowsMessage,
    StepDone,
    StepReport,
    VectorMessage,
    encode,
)

__all__ = ["MAX_ATTEMPTS", "Run", "RunSetup", "Timings", "attempt_allowance", "task_allowance"]

log = logging.getLogger("edgeci.orchestrator")

MIN_TASK_DEADLINE_S = 3.0
MAX_TASK_DEADLINE_S = 300.0
DEADLINE_FACTOR = 5.0
POLL_S = 0.05
MAX_ATTEMPTS = 3
REPORTS_S = 0.5
"""How long a late attempt waits for its devices to say how far they got (a device answers
from its message thread, whatever its worker is doing)."""
EXPIRY_MARGIN_S = 30.0
"""A device drops an attempt's rows this long after the attempt's deadline (counted from when
its program arrived), released or not: never while the orchestrator still waits for it."""


def task_allowance(predicted_s: float, min_allowance_s: float) -> float:
    """How long work predicted to take ``predicted_s`` may take before it is given up:
    :data:`DEADLINE_FACTOR` times that, at least ``min_allowance_s``, at most
    :data:`MAX_TASK_DEADLINE_S`."""
    return min(MAX_TASK_DEADLINE_S, max(min_allowance_s, DEADLINE_FACTOR * predicted_s))


def attempt_allowance(expected_s: float, min_allowance_s: float, late: int) -> float:
    """How long an attempt waits for what it is owed: the :func:`task_allowance` of the
    seconds predicted for it (its plan and the work already handed out), doubled for each
    earlier attempt that ran past its deadline: the devices that missed it were online, so
    they may have been busy rather than lost; the next attempt, re-planned without them,
    allows more."""
    return min(MAX_TASK_DEADLINE_S, task_allowance(expected_s, min_allowance_s) * 2**late)


@dataclass
class Timings:
    """Where one inference's time went (seconds, on the orchestrator's clock)."""

    plan_s: float = 0.0
    auction_s: float = 0.0
    scatter_s: float = 0.0
    wait_s: float = 0.0
    merge_s: float = 0.0
    gateway_s: float = 0.0
    tail_s: float = 0.0
    recovered_tasks: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class RunSetup:
    """What a run of one request gets from its orchestrator. ``devices()`` gives the live
    candidate devices; ``prepare(device, block)`` runs before work is sent (weights for
    fetching devices); ``replan(devices)``, for a request served whole, its plan on the
    devices left (None: auction the plan's blocks). With ``trace`` the run records what
    every resource did, in seconds from ``origin`` (a ``perf_counter`` value: when the
    request arrived). ``profile`` and ``broker_link``: the orchestrator's own, for the
    awards' environment."""

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
    profile: DeviceProfile
    broker_link: Link
    replan: Callable[[list[DeviceView]], Plan] | None = None
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
    """Runs one request's plan: attempts, each driven by an :class:`Attempt`."""

    def __init__(self, setup: RunSetup) -> None:
        self.setup = setup
        self.orchestrator, self.request, self.held = setup.orchestrator, setup.request, setup.held
        self.plan, self.shapes, self.mail = setup.plan, setup.shapes, setup.mail
        self.profile, self.broker_link, self.tails = setup.profile, setup.broker_link, setup.tails
        self.input_hw = (self.shapes[0].height, self.shapes[0].width)
        self.auctioneer = Auctioneer(
            self.orchestrator,
            self.held.chain.model_name,
            self.input_hw,
            setup.publish,
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

    # ------------------------------------------------------------ shared with the awards
    def give_up_on(self, devices: set[str] | frozenset[str], why: str, gone: bool = False) -> None:
        """This run uses these devices no more; unless they left (``gone``: the device table
        knows), the orchestrator's next requests hold them out as well (:class:`Penalties`)."""
        self.failed |= devices
        if devices and not gone:
            self.setup.penalties.failed(devices, time.perf_counter(), f"{self.request}: {why}")

    def check_wanted(self) -> None:
        """Raise if the client stopped waiting (its deadline passed): the caller's cleanup
        (releasing the devices' rows) runs, and no more work is handed out for it."""
        give_up_at = self.setup.give_up_at
        if give_up_at is not None and time.perf_counter() > give_up_at:
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

    def _online(self) -> frozenset[str]:
        return frozenset(v.name for v in self.setup.devices())

    # ------------------------------------------------------------ public
    def run(self, image: np.ndarray) -> torch.Tensor:
        """The logits of ``image`` (NumPy float32, as the request brought it)."""
        holdings = Holdings(self.shapes, image)
        start, late, reasons = 0, 0, []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            self.check_wanted()
            views = [v for v in self.setup.devices() if v.name not in self.failed]
            views = [v for v in views if v.name not in self.mail.silence] or views  # work for those who answer
            if not views:
                raise InferenceError("no capable device remains for this inference")
            plan = self._plan(views, start, attempt)
            outcome, work = self._attempt(f"{self.request}.{attempt}", plan, start, holdings, late)
            if isinstance(outcome, Finish):
                return self._finish(plan, holdings, work)
            late += outcome.late
            self.timings.recovered_tasks += 1
            reasons.append(outcome.why)
            log.warning("%s: attempt %d failed (%s); re-planning", self.request, attempt, outcome.why)
            start = outcome.boundary
            holdings.forget_after(start)
        raise InferenceError(f"gave up after {MAX_ATTEMPTS} attempts: {'; '.join(reasons)}")

    def _plan(self, views: list[DeviceView], start: int, attempt: int) -> Plan:
        """The attempt's plan: a whole request's on the devices left, ``flow``'s awards, or
        the gathering plan (auctioned for ``edgeci``, and for any restart)."""
        if self.setup.replan is not None:
            return self.setup.replan(views)
        if self.plan.strategy.keeps_rows:
            return flow_plan(self, views)
        names = {v.name for v in views}
        stale = any(d not in names for d in self.plan.devices)
        return gather_plan(self, views, start, auction=self.plan.auctioned or attempt > 1 or stale)

    def _finish(self, plan: Plan, holdings: Holdings, work: Compiled) -> torch.Tensor:
        started = time.perf_counter()
        logits = holdings.logits(self.held.chain, work)
        self.timings.tail_s = time.perf_counter() - started
        self.mark(ORCHESTRATOR, "tail", started, time.perf_counter(), _tail_note(plan))
        return logits

    # ------------------------------------------------------------ one attempt
    def _attempt(
        self, program: str, plan: Plan, start: int, holdings: Holdings, late: int
    ) -> tuple[Finish | Restart, Compiled]:
        try:
            work = compile_plan(plan, self.orchestrator, start)
        except PlanningError as exc:
            raise InferenceError(f"the plan cannot run: {exc}") from exc
        self.used |= work.devices
        expected = plan.predicted_s + self.setup.backlog_s
        allowance = attempt_allowance(expected, self.setup.min_allowance_s, late)
        started = time.perf_counter()
        machine = Attempt(
            work,
            program,
            self.orchestrator,
            started + allowance,
            tuple(s.channels for s in self.shapes),
            self.held.chain.tail_parts.classes,
            self._pulled_allowance,
        )
        edge = _AttemptEdge(self, machine, plan, holdings, allowance + EXPIRY_MARGIN_S)
        with self.mail.open(program) as box:
            edge.box = box
            try:
                for device, work_of in work.programs.items():  # stage weights first: they are the long sends
                    for step in work_of.steps:
                        self.setup.prepare(device, step.block)
                outcome = edge.drive(machine.handle(Begin(time.perf_counter(), self._online())))
            except BaseException:
                edge.release_all("attempt failed")
                raise
        self.timings.wait_s += time.perf_counter() - started
        self.timings.recovered_tasks += machine.recovered
        return outcome, work

    def _pulled_allowance(self, step: ProgramStep, device: str) -> float:
        """How long a device may take for a pulled tile: a multiple of its own predicted time."""
        rows = self.held.row_model(*self.input_hw)
        view = next((d for d in self.setup.devices() if d.name == device), None)
        r = step.out_region.rows
        block = step.block
        predicted = float(rows.strip_seconds(view, block, np.array([r.start]), np.array([r.stop]))[0]) if view else 1.0
        return task_allowance(predicted, self.setup.min_allowance_s)


def _tail_note(plan: Plan) -> str:
    tail = plan.tail
    if tail.on_orchestrator:
        return ""
    if tail.parts:
        return f"first layer split over {', '.join(d for d, _ in tail.parts)}, finished on {tail.finisher}"
    return f"tail on {tail.finisher}"


class _AttemptEdge:
    """Carries out one attempt's actions and feeds it what arrives."""

    def __init__(self, run: Run, machine: Attempt, plan: Plan, holdings: Holdings, expires_s: float) -> None:
        self.run, self.machine, self.plan, self.holdings, self.expires_s = run, machine, plan, holdings, expires_s
        self.box: Box = queue.Queue()
        self.out: set[tuple[str, str]] = set()  # (program id, device) that may hold rows (one id, many devices)
        self.reported: set[tuple[str, str, int]] = set()  # (program, device, item) on the timeline
        self._array: np.ndarray = np.zeros(0, np.float32)  # what the event being handled brought

    def drive(self, actions: list[Action]) -> Finish | Restart:
        run = self.run
        while True:
            outcome = self.perform(actions)
            if outcome is not None:
                return outcome
            run.check_wanted()  # raises: the attempt's rows are released
            actions = self.machine.handle(self._next_event())

    def _next_event(self) -> Event:
        """What has arrived is taken before the clock is read: a busy orchestrator must not
        call late what is already in its box."""
        try:
            arrived, message = self.box.get_nowait()
        except queue.Empty:
            tick = Tick(time.perf_counter(), self.run._online())
            if self.machine.late or tick.now > self.machine.deadline:
                return tick
            try:
                arrived, message = self.box.get(timeout=POLL_S)
            except queue.Empty:
                return tick
        return self._event(message, arrived)

    def _event(self, message: Inbox, arrived: float) -> Event:
        if isinstance(message, RowsMessage):
            array = message.rows.array
            self._array = array
            return TileArrived(
                message.request,
                message.sender,
                message.boundary,
                message.region,
                tuple(array.shape),
                str(array.dtype),
                arrived,
            )
        if isinstance(message, VectorMessage):
            array = message.values.array
            self._array = array
            return VectorArrived(
                message.request,
                message.sender,
                message.features,
                message.logits,
                tuple(array.shape),
                str(array.dtype),
                arrived,
            )
        if isinstance(message, Failure):
            return DeviceFailed(message.request, message.device, message.error, arrived)
        if isinstance(message, StepDone):
            return StepFinished(message.request, message.device, message.boundary)
        if isinstance(message, StepReport):
            self._mark_report(message)
        return Tick(time.perf_counter(), self.run._online())  # a report, or a progress nobody asked for now

    # ------------------------------------------------------------ actions
    def perform(self, actions: list[Action]) -> Finish | Restart | None:
        run = self.run
        for action in actions:
            if isinstance(action, SendProgram):
                self._send_program(action)
            elif isinstance(action, SendRows):
                self._send_rows(action.program, action.forward)
            elif isinstance(action, Keep):
                self._keep(action)
            elif isinstance(action, Compute):
                self._compute(action.block)
                outcome = self.perform(self.machine.handle(Computed(action.block.stop, time.perf_counter())))
                if outcome is not None:
                    return outcome
            elif isinstance(action, Go):
                for device in action.devices:
                    go = GoMessage(action.program, run.orchestrator, action.boundary)
                    run.setup.publish(DEVICE_TASKS.build(device=device), encode(go))
            elif isinstance(action, Release):
                outcome = self._release(action)
                if outcome is not None:
                    return outcome
            elif isinstance(action, GiveUp):
                run.give_up_on(set(action.devices), action.why, gone=action.gone)
                log.warning("%s: gave up %s (%s)", run.request, ", ".join(sorted(action.devices)), action.why)
            elif isinstance(action, Ignore):
                log.debug("%s: ignored a message from %s: %s", run.request, action.sender, action.why)
            elif isinstance(action, Fail):
                raise InferenceError(action.reason)
            elif isinstance(action, Finish | Restart):
                return action
        return None

    def _send_program(self, action: SendProgram) -> None:
        run, work, started = self.run, action.work, time.perf_counter()
        if action.program != self.machine.program:  # a pulled tile: its own id, answered into our box
            run.mail.alias(action.program, self.box)
            for step in work.steps:
                run.setup.prepare(action.device, step.block)
        carried = action.carried
        message = ProgramMessage(
            request=action.program,
            orchestrator=run.orchestrator,
            model=run.held.chain.model_name,
            digest=run.held.digest,
            input_hw=run.input_hw,
            steps=work.steps,
            expires_s=self.expires_s,
            input_boundary=carried.boundary if carried else 0,
            input_region=carried.region if carried else None,
            input=self.holdings.cut(carried.boundary, carried.region) if carried else None,
            tail=work.tail,
            finish=work.finish,
            barrier=self.plan.barrier,
            compress=self.plan.compress,
            trace=run.timeline is not None,
            prepare=work.prepare,
        )
        run.setup.publish(DEVICE_TASKS.build(device=action.device), encode(message))
        self.out.add((action.program, action.device))
        run.used.add(action.device)
        sent = time.perf_counter()
        run.timings.scatter_s += sent - started
        only = work.steps[0] if len(work.steps) == 1 else None
        block, region = (only.block, only.out_region) if only else (None, None)
        run.mark(ORCHESTRATOR, "prepare", started, sent, action.device, block, region)

    def _send_rows(self, program: str, forward: Forward) -> None:
        run, started = self.run, time.perf_counter()
        rows = PackedArray(self.holdings.cut(forward.boundary, forward.region), "raw")
        message = RowsMessage(program, run.orchestrator, forward.boundary, forward.region, rows)
        topic = DEVICE_ROWS.build(device=forward.to, sender=run.orchestrator, request=program)
        run.setup.publish(topic, encode(message))
        sent = time.perf_counter()
        run.timings.scatter_s += sent - started
        run.mark(ORCHESTRATOR, "prepare", started, sent, forward.to, None, forward.region)

    def _keep(self, action: Keep) -> None:
        started = time.perf_counter()
        if action.answer is not None:
            self.holdings.keep_answer(action.answer, self._array)
            return
        assert action.region is not None
        self.holdings.keep(action.boundary, action.region, self._array)
        self.run.timings.merge_s += time.perf_counter() - started
        self.run.mark(ORCHESTRATOR, "merge", started, time.perf_counter(), action.sender, None, action.region)

    def _compute(self, block: FusedBlock) -> None:
        started = time.perf_counter()
        self.holdings.compute(self.run.held.chain, block)
        self.run.timings.gateway_s += time.perf_counter() - started
        shape = self.run.shapes[block.stop]
        whole = TileRegion.whole(shape.height, shape.width)
        self.run.mark(ORCHESTRATOR, "gateway", started, time.perf_counter(), "", block, whole)

    def _release(self, action: Release) -> Finish | Restart | None:
        """Release programs; a late attempt's devices say how far they got, and the attempt
        decides whom to blame (its outcome ends the attempt)."""
        for program, device in action.programs:
            self._publish_release(program, device, action.why, action.report)
            self.out.discard((program, device))
        if not action.report:
            return None
        return self.perform(self.machine.handle(Reported(self._reports({d for _, d in action.programs}))))

    def release_all(self, why: str) -> None:
        """Tell every device still holding a program of the attempt to drop it (a device that
        is gone drops it when it expires)."""
        for program, device in sorted(self.out):
            self._publish_release(program, device, why, False)
        self.out.clear()

    def _publish_release(self, program: str, device: str, why: str, report: bool) -> None:
        run = self.run
        try:
            release = ReleaseMessage(program, run.orchestrator, why, report)
            run.setup.publish(DEVICE_TASKS.build(device=device), encode(release))
        except Exception as exc:  # the broker may be gone too; expiry covers it
            log.warning("%s: cannot release %s on %s: %s", run.request, program, device, exc)

    def _reports(self, devices: set[str]) -> dict[str, tuple[int, tuple[str, ...]]]:
        """What each device of a late attempt says as it is released, for up to
        :data:`REPORTS_S` (a device that does not answer by then is blamed)."""
        reports: dict[str, tuple[int, tuple[str, ...]]] = {}
        deadline = time.perf_counter() + REPORTS_S
        while devices - set(reports) and (left := deadline - time.perf_counter()) > 0:
            try:
                _, message = self.box.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(message, Progress) and message.device in devices:
                reports[message.device] = (message.item, message.waiting_for)
        return reports

    def _mark_report(self, report: StepReport) -> None:
        """A device's item on the timeline: its clock is trusted only between the request's
        arrival and now (clocks on boards drift), instants out of order are dropped."""
        run = self.run
        seen = (report.request, report.device, report.item)
        if run.timeline is None or report.device not in run.used or seen in self.reported:
            return  # untraced, a stranger's, or a second delivery
        self.reported.add(seen)
        now = time.perf_counter()
        instants = [report.started_at, report.computed_at, report.sent_at]
        if instants != sorted(instants):
            log.warning("%s: %s reported its step instants out of order: %s", run.request, report.device, instants)
            return
        started, computed, sent = (min(max(i - run._wall_offset, run.origin), now) for i in instants)
        kind = "compute" if report.block is not None else "tail"
        run.mark(report.device, kind, started, computed, "", report.block, report.region)
        if sent > computed:
            run.mark(report.device, "send", computed, sent, "", report.block, report.region)
