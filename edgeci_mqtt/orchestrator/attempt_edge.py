"""The edge of one attempt: it carries out what the pure
:class:`~edgeci_mqtt.orchestrator.attempt.Attempt` decides, and feeds it what arrives.

It stamps events with the clock and the devices online, publishes programs, rows,
go-aheads and releases, keeps what arrives in the request's
:class:`~edgeci_mqtt.orchestrator.holdings.Holdings`, computes what the plan keeps on the
orchestrator, and records the traced timeline through its
:class:`~edgeci_mqtt.orchestrator.run.Run`.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import TYPE_CHECKING

import numpy as np

from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.errors import InferenceError
from edgeci_mqtt.orchestrator.actions import (
    Action,
    Compute,
    Fail,
    Finish,
    GiveUp,
    Go,
    Ignore,
    Keep,
    Release,
    Restart,
    SendProgram,
    SendRows,
)
from edgeci_mqtt.orchestrator.attempt import (
    Attempt,
    Computed,
    DeviceFailed,
    Event,
    Reported,
    StepFinished,
    Tick,
    TileArrived,
    VectorArrived,
)
from edgeci_mqtt.orchestrator.holdings import Holdings
from edgeci_mqtt.orchestrator.mailboxes import Box, Inbox
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.wire import (
    DEVICE_ROWS,
    DEVICE_TASKS,
    DoneMessage,
    FailureMessage,
    GoMessage,
    PackedArray,
    ProgramMessage,
    ProgressMessage,
    ReleaseMessage,
    ReportMessage,
    RowsMessage,
    VectorMessage,
    encode,
)

if TYPE_CHECKING:
    from edgeci_mqtt.orchestrator.run import Run

__all__ = ["POLL_S", "REPORTS_S", "AttemptEdge", "arrival", "program_message"]

log = logging.getLogger("edgeci.orchestrator")

POLL_S = 0.05
"""How long the edge waits for a message before it tells the attempt that time passed."""
REPORTS_S = 0.5
"""How long a late attempt waits for its devices to say how far they got (a device answers
from its message thread, whatever its worker is doing)."""


def arrival(message: RowsMessage | VectorMessage, now: float) -> tuple[TileArrived | VectorArrived, np.ndarray]:
    """The event of rows or a vector reaching the orchestrator at ``now``, and the array it
    brought (the attempt sees only its shape and type; the edge keeps the array)."""
    array = message.rows.array if isinstance(message, RowsMessage) else message.values.array
    shape, dtype = tuple(array.shape), str(array.dtype)
    if isinstance(message, RowsMessage):
        return TileArrived(message.request, message.sender, message.boundary, message.region, shape, dtype, now), array
    return VectorArrived(message.request, message.sender, message.features, message.logits, shape, dtype, now), array


def program_message(
    action: SendProgram,
    plan: Plan,
    holdings: Holdings,
    *,
    orchestrator: str,
    digest: str,
    expires_s: float,
    deadline_s: float = 0.0,
    trace: bool = False,
) -> ProgramMessage:
    """The program ``action`` sends, with the rows of the start boundary it carries cut
    from what the orchestrator holds."""
    work, carried = action.work, action.carried
    return ProgramMessage(
        request=action.program,
        orchestrator=orchestrator,
        model=plan.model,
        digest=digest,
        input_hw=(plan.input_shape.height, plan.input_shape.width),
        steps=work.steps,
        expires_s=expires_s,
        deadline_s=deadline_s,
        input_boundary=carried.boundary if carried else 0,
        input_region=carried.region if carried else None,
        input=holdings.cut(carried.boundary, carried.region) if carried else None,
        tail=work.tail,
        finish=work.finish,
        barrier=plan.barrier,
        compress=plan.compress,
        trace=trace,
        prepare=work.prepare,
    )


class AttemptEdge:
    """Carries out one attempt's actions and feeds it what arrives in ``box``; the programs
    it sends expire ``expires_s`` after they reach their devices."""

    def __init__(self, run: Run, machine: Attempt, plan: Plan, holdings: Holdings, box: Box, expires_s: float) -> None:
        self.run, self.machine, self.plan, self.holdings = run, machine, plan, holdings
        self.box, self.expires_s = box, expires_s
        self.out: set[tuple[str, str]] = set()  # (program id, device) that may hold rows (one id, many devices)
        self.reported: set[tuple[str, str, int]] = set()  # (program, device, item) on the timeline
        self._array: np.ndarray = np.zeros(0, np.float32)  # what the event being handled brought

    def drive(self, actions: list[Action]) -> Finish | Restart:
        while True:
            outcome = self.perform(actions)
            if outcome is not None:
                return outcome
            self.run.check_wanted()  # raises: the attempt's rows are released
            actions = self.machine.handle(self._next_event())

    def _next_event(self) -> Event:
        """What has arrived is taken before the clock is read: a busy orchestrator must not
        call late what is already in its box."""
        try:
            arrived, message = self.box.get_nowait()
        except queue.Empty:
            tick = Tick(time.perf_counter(), self.run.online())
            if self.machine.late or tick.now > self.machine.deadline:
                return tick
            try:
                arrived, message = self.box.get(timeout=POLL_S)
            except queue.Empty:
                return tick
        return self._event(message, arrived)

    def _event(self, message: Inbox, arrived: float) -> Event:
        if isinstance(message, RowsMessage | VectorMessage):
            event, self._array = arrival(message, arrived)
            return event
        if isinstance(message, FailureMessage):
            return DeviceFailed(message.request, message.device, message.error, arrived)
        if isinstance(message, DoneMessage):
            return StepFinished(message.request, message.device, message.boundary)
        if isinstance(message, ReportMessage):
            self._mark_report(message)
        return Tick(time.perf_counter(), self.run.online())  # a report, or a progress nobody asked for now

    # ------------------------------------------------------------ actions
    def perform(self, actions: list[Action]) -> Finish | Restart | None:
        run = self.run
        for action in actions:
            if isinstance(action, SendProgram):
                self._send_program(action)
            elif isinstance(action, SendRows):
                self._send_rows(action)
            elif isinstance(action, Keep):
                self._keep(action)
            elif isinstance(action, Compute):
                outcome = self._compute(action)
                if outcome is not None:
                    return outcome
            elif isinstance(action, Go):
                for device in action.devices:
                    go = GoMessage(action.program, run.orchestrator, action.boundary)
                    run.services.publish(DEVICE_TASKS.build(device=device), encode(go))
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
            else:  # Finish or Restart: the attempt is over
                return action
        return None

    def _send_program(self, action: SendProgram) -> None:
        run, work, started = self.run, action.work, time.perf_counter()
        if action.program != self.machine.program:  # a pulled tile: its own id, answered into our box
            run.mail.alias(action.program, self.box)
            for step in work.steps:
                run.setup.prepare(action.device, step.block)
        message = program_message(
            action,
            self.plan,
            self.holdings,
            orchestrator=run.orchestrator,
            digest=run.held.digest,
            expires_s=self.expires_s,
            deadline_s=run.setup.deadline.wire(time.perf_counter()),  # the client's, as seconds left
            trace=run.timeline is not None,
        )
        run.services.publish(DEVICE_TASKS.build(device=action.device), encode(message))
        self.out.add((action.program, action.device))
        run.used.add(action.device)
        only = work.steps[0] if len(work.steps) == 1 else None
        block, region = (only.block, only.out_region) if only else (None, None)
        run.spent("prepare", started, action.device, block, region)

    def _send_rows(self, action: SendRows) -> None:
        run, forward, started = self.run, action.forward, time.perf_counter()
        rows = PackedArray(self.holdings.cut(forward.boundary, forward.region), "raw")
        message = RowsMessage(action.program, run.orchestrator, forward.boundary, forward.region, rows)
        topic = DEVICE_ROWS.build(device=forward.to, sender=run.orchestrator, request=action.program)
        run.services.publish(topic, encode(message))
        run.spent("prepare", started, forward.to, None, forward.region)

    def _keep(self, action: Keep) -> None:
        started = time.perf_counter()
        if action.answer is not None:
            self.holdings.keep_answer(action.answer, self._array)
            return
        assert action.region is not None
        self.holdings.keep(action.boundary, action.region, self._array)
        self.run.spent("merge", started, action.sender, None, action.region)

    def _compute(self, action: Compute) -> Finish | Restart | None:
        """A block the plan keeps here, on the whole map the orchestrator holds; the attempt
        hears that it is done."""
        run, block, started = self.run, action.block, time.perf_counter()
        self.holdings.compute(run.held.chain, block)
        shape = run.shapes[block.stop]
        run.spent("gateway", started, "", block, TileRegion.whole(shape.height, shape.width))
        return self.perform(self.machine.handle(Computed(block.stop, time.perf_counter())))

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
            run.services.publish(DEVICE_TASKS.build(device=device), encode(release))
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
            if isinstance(message, ProgressMessage) and message.device in devices:
                reports[message.device] = (message.item, message.waiting_for)
        return reports

    def _mark_report(self, report: ReportMessage) -> None:
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
        started, computed, sent = (min(max(i - run.wall_offset, run.origin), now) for i in instants)
        kind = "compute" if report.block is not None else "tail"
        run.mark(report.device, kind, started, computed, "", report.block, report.region)
        if sent > computed:
            run.mark(report.device, "send", computed, sent, "", report.block, report.region)
