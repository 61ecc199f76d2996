"""One request on the cluster, under any strategy: attempts of its plan until the answer.

An attempt that ends in a restart is re-planned without the devices it gave up, from the
boundary it says, under a new program id so that no stale row can mix in (after a missed
deadline, with twice the time); after :data:`MAX_ATTEMPTS` the request fails clearly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.deadline import NEVER, Deadline
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import InferenceError, PlanningError
from edgeci_mqtt.models.held import HeldModel
from edgeci_mqtt.orchestrator.actions import Finish, Restart
from edgeci_mqtt.orchestrator.attempt import NO_DEVICE, Attempt, Begin
from edgeci_mqtt.orchestrator.attempt_edge import AttemptEdge, Holdings
from edgeci_mqtt.orchestrator.auction import flow_plan, gather_plan
from edgeci_mqtt.orchestrator.mailboxes import Mailboxes
from edgeci_mqtt.orchestrator.penalties import Penalties
from edgeci_mqtt.orchestrator.programs import Compiled, compile_plan
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.planner.tail import TailPlan
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval
from edgeci_mqtt.wire import Message, ProgramStep

__all__ = [
    "EXPIRY_MARGIN_S",
    "MAX_ATTEMPTS",
    "MIN_TASK_DEADLINE_S",
    "Run",
    "RunServices",
    "RunSetup",
    "Timings",
    "allowance",
]

log = logging.getLogger("edgeci.orchestrator")

MIN_TASK_DEADLINE_S = 3.0
MAX_TASK_DEADLINE_S = 300.0
DEADLINE_FACTOR = 5.0
MAX_ATTEMPTS = 3
EXPIRY_MARGIN_S = 30.0
"""A device drops an attempt's rows this long after the attempt's deadline (counted from when
its program arrived), released or not: never while the orchestrator still waits for it."""


def allowance(predicted_s: float, min_allowance_s: float, late: int = 0) -> float:
    """How long work predicted to take ``predicted_s`` (a pulled tile; an attempt, with the
    work already handed out) may take: :data:`DEADLINE_FACTOR` times that, at least
    ``min_allowance_s``, doubled for each earlier attempt that ran past its deadline (its
    devices were online, so perhaps busy rather than lost), at most :data:`MAX_TASK_DEADLINE_S`."""
    return min(MAX_TASK_DEADLINE_S, max(min_allowance_s, DEADLINE_FACTOR * predicted_s) * 2**late)


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

    def add(self, kind: str, seconds: float) -> None:
        """Count ``seconds`` the orchestrator spent on ``kind`` of work (as its timeline names
        it: its ``prepare`` is the scatter)."""
        name = "scatter_s" if kind == "prepare" else f"{kind}_s"
        setattr(self, name, getattr(self, name) + seconds)


@dataclass(frozen=True)
class RunServices:
    """What every run of one orchestrator gets from it. ``profile`` and ``broker_link``: the
    orchestrator's own, for the awards' environment; ``min_allowance_s``: the least time a
    device gets for work before it is given up."""

    orchestrator: str
    publish: Callable[[str, Message], None]
    mail: Mailboxes
    penalties: Penalties
    """The orchestrator's record of devices that failed requests: a device a run gives up
    on is held out of the next requests too."""
    profile: DeviceProfile
    broker_link: Link
    auction_s: float = 0.5
    min_allowance_s: float = MIN_TASK_DEADLINE_S
    tails: dict[str, TailPlan] = field(default_factory=dict)
    """The orchestrator's tail placement in use, by model digest (``flow``): shared by its
    runs, so that devices keep the classifier rows they were given."""


@dataclass(frozen=True)
class RunSetup:
    """One request's run. ``devices()`` gives the live candidate devices;
    ``prepare(device, block)`` runs before work is sent (weights for fetching devices);
    ``replan(devices)``, for a request served whole, its plan on the devices left (None:
    auction the plan's blocks). With ``trace`` the run records what every resource did, in
    seconds from ``origin`` (a ``perf_counter`` value: when the request arrived)."""

    services: RunServices
    request: str
    held: HeldModel
    plan: Plan
    shapes: list[FeatureShape]
    devices: Callable[[], list[DeviceView]]
    prepare: Callable[[str, FusedBlock], None]
    origin: float
    replan: Callable[[list[DeviceView]], Plan] | None = None
    trace: bool = False
    backlog_s: float = 0.0
    """Predicted seconds of work already handed to the devices this run uses (it may queue behind it)."""
    deadline: Deadline = NEVER
    """The client's: past it nobody waits for the answer, so the run stops instead of
    computing for no one, and the devices, told with their programs, drop its work."""


class Run:
    """Runs one request's plan: attempts, each driven by an :class:`Attempt`."""

    def __init__(self, setup: RunSetup) -> None:
        self.setup, self.services = setup, setup.services
        self.orchestrator, self.mail = self.services.orchestrator, self.services.mail
        self.request, self.held, self.plan, self.shapes = setup.request, setup.held, setup.plan, setup.shapes
        self.input_hw = (self.shapes[0].height, self.shapes[0].width)
        self.timings = Timings()
        self.failed: set[str] = set()
        self.used: set[str] = set()
        self.origin = setup.origin
        self.timeline: list[Interval] | None = [] if setup.trace else None
        self.wall_offset = time.time() - time.perf_counter()  # from perf_counter to the devices' clocks

    # ------------------------------------------------------------ shared with the awards
    def give_up_on(self, devices: set[str] | frozenset[str], why: str, gone: bool = False) -> None:
        """This run uses these devices no more; unless they left (``gone``: the device table
        knows), the orchestrator's next requests hold them out as well (:class:`Penalties`)."""
        self.failed |= devices
        if devices and not gone:
            self.services.penalties.failed(devices, time.perf_counter(), f"{self.request}: {why}")

    def check_wanted(self) -> None:
        """Raise if the client stopped waiting (its deadline passed): the caller's cleanup
        (releasing the devices' rows) runs, and no more work is handed out for it."""
        if self.setup.deadline.passed(time.perf_counter()):
            raise InferenceError(f"{self.request}: the client's deadline passed; stopped unfinished")

    def spent(
        self,
        kind: str,
        start: float,
        note: str = "",
        block: FusedBlock | None = None,
        region: TileRegion | None = None,
        end: float | None = None,
    ) -> None:
        """The orchestrator did ``kind`` of work from ``start`` to ``end`` (``perf_counter``
        times; None: now): counted in the :class:`Timings` and, if this request is traced,
        on its timeline."""
        end = time.perf_counter() if end is None else end
        self.timings.add(kind, end - start)
        if self.timeline is not None:
            interval = Interval(ORCHESTRATOR, kind, start - self.origin, end - self.origin, block, region, note)
            self.timeline.append(interval)

    def online(self) -> frozenset[str]:
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
                raise InferenceError(NO_DEVICE)
            plan = self._plan(views, start, attempt)
            outcome, work = self._attempt(f"{self.request}.{attempt}", plan, start, holdings, late)
            if isinstance(outcome, Finish):
                started = time.perf_counter()
                logits = holdings.logits(self.held.chain, work)
                self.spent("tail", started, _tail_note(plan))
                return logits
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
        stale = not set(self.plan.devices) <= {v.name for v in views}
        return gather_plan(self, views, start, auction=self.plan.auctioned or attempt > 1 or stale)

    # ------------------------------------------------------------ one attempt
    def _attempt(
        self, program: str, plan: Plan, start: int, holdings: Holdings, late: int
    ) -> tuple[Finish | Restart, Compiled]:
        try:
            work = compile_plan(plan, self.orchestrator, start)
        except PlanningError as exc:
            raise InferenceError(f"the plan cannot run: {exc}") from exc
        self.used |= set(work.programs)
        allowed = allowance(plan.predicted_s + self.setup.backlog_s, self.services.min_allowance_s, late)
        started = time.perf_counter()
        machine = Attempt(
            work,
            program,
            self.orchestrator,
            started + allowed,
            tuple(s.channels for s in self.shapes),
            self.held.chain.output_size,
            self._pulled_allowance,
        )
        with self.mail.open(program) as box:
            edge = AttemptEdge(self, machine, plan, holdings, box, allowed + EXPIRY_MARGIN_S)
            try:
                for device, work_of in work.programs.items():  # stage weights first: they are the long sends
                    for step in work_of.steps:
                        self.setup.prepare(device, step.block)
                outcome = edge.drive(machine.handle(Begin(time.perf_counter(), self.online())))
            except BaseException:
                edge.release(sorted(edge.out), "attempt failed")
                raise
        self.timings.wait_s += time.perf_counter() - started
        self.timings.recovered_tasks += machine.recovered
        return outcome, work

    def _pulled_allowance(self, step: ProgramStep, device: str) -> float:
        """How long a device may take for a pulled tile: a multiple of its own predicted time."""
        costs = self.held.row_model(*self.input_hw)
        view = next((d for d in self.setup.devices() if d.name == device), None)
        r, block = step.out_region.rows, step.block
        predicted = float(costs.strip_seconds(view, block, np.array([r.start]), np.array([r.stop]))[0]) if view else 1.0
        return allowance(predicted, self.services.min_allowance_s)


def _tail_note(plan: Plan) -> str:
    tail = plan.tail
    if tail.on_orchestrator:
        return ""
    if tail.parts:
        return f"first layer split over {', '.join(d for d, _ in tail.parts)}, finished on {tail.finisher}"
    return f"tail on {tail.finisher}"
