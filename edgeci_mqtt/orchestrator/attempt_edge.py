"""The edge of one attempt: it feeds the pure :class:`~edgeci_mqtt.orchestrator.attempt.Attempt`
what arrives, stamped with the clock and the devices online, and carries out what it
decides: it publishes, keeps what arrives in the request's :class:`Holdings`, computes what
the plan keeps here, and records the traced timeline through its :class:`~edgeci_mqtt.orchestrator.run.Run`.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.errors import InferenceError
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.orchestrator import actions as act
from edgeci_mqtt.orchestrator.attempt import Arrived, Attempt, Computed, Event, Tick
from edgeci_mqtt.orchestrator.mailboxes import Box
from edgeci_mqtt.orchestrator.programs import Answer, Compiled, Logits
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.timeline import Interval
from edgeci_mqtt.wire import (
    DEVICE_ROWS,
    DEVICE_TASKS,
    GoMessage,
    PackedArray,
    ProgramMessage,
    ReleaseMessage,
    ReportMessage,
    RowsMessage,
    SliceFrom,
)

if TYPE_CHECKING:
    from edgeci_mqtt.orchestrator.run import Run

__all__ = ["POLL_S", "AttemptEdge", "Holdings", "program_message"]

log = logging.getLogger("edgeci.orchestrator")

POLL_S = 0.05
"""How long the edge waits for a message before it tells the attempt that time passed."""

Map = NDArray[np.float32]


class Holdings:
    """What the orchestrator holds of one request, a holder of rows like any device: its maps
    by boundary (the image at 0), stitched, cut, computed here, and the answers. Maps are
    NumPy float32 arrays, as they travel; torch only sees them (without a copy) to compute."""

    def __init__(self, shapes: Sequence[FeatureShape], image: Map) -> None:
        self.shapes = shapes
        self.maps: dict[int, Map] = {0: np.ascontiguousarray(image, dtype=np.float32)}
        self.answers: dict[Answer, Map] = {}

    def whole(self, boundary: int) -> TileRegion:
        shape = self.shapes[boundary]
        return TileRegion.whole(shape.height, shape.width)

    def keep(self, boundary: int, region: TileRegion, tile: Map) -> None:
        """Stitch a tile into its boundary's map."""
        if boundary not in self.maps:
            shape = self.shapes[boundary]
            self.maps[boundary] = np.empty((1, shape.channels, shape.height, shape.width), dtype=np.float32)
        rows, cols = region.within(self.whole(boundary))
        self.maps[boundary][:, :, rows, cols] = tile

    def cut(self, boundary: int, region: TileRegion) -> Map:
        """``region`` of a map held whole, as a contiguous array to send."""
        rows, cols = region.within(self.whole(boundary))
        return np.ascontiguousarray(self.maps[boundary][:, :, rows, cols])

    def forget_after(self, boundary: int) -> None:
        """A restart from ``boundary``: what was stitched after it is redone."""
        self.maps = {b: m for b, m in self.maps.items() if b <= boundary}
        self.answers.clear()

    def compute(self, chain: StageChain, block: FusedBlock) -> None:
        """Run ``block`` here on the whole map at its start (DeepThings' gateway layers)."""
        whole_in, whole_out = self.whole(block.start), self.whole(block.stop)
        with torch.inference_mode():
            out = run_block_tile(
                chain.kernels, list(self.shapes), block, torch.from_numpy(self.maps[block.start]), whole_in, whole_out
            )
        self.maps[block.stop] = out.contiguous().numpy()

    def logits(self, chain: StageChain, work: Compiled) -> torch.Tensor:
        """The answer: the tail on the final map, the tail's finish on the first layer's
        slices (in feature order), or the logits a device sent."""
        slices = sorted((a for a in self.answers if isinstance(a, SliceFrom)), key=lambda a: a.features.start)
        with torch.inference_mode():
            if work.tail_here:
                return chain.tail(torch.from_numpy(self.maps[work.final]))
            if slices:
                first = np.concatenate([self.answers[a] for a in slices], axis=1)
                return chain.split_tail().finish(torch.from_numpy(first))
            logits = next(a for a in self.answers if isinstance(a, Logits))
            return torch.from_numpy(self.answers[logits])


def program_message(
    action: act.SendProgram,
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

    def drive(self, actions: list[act.Action]) -> act.Finish | act.Restart:
        while (outcome := self.perform(actions)) is None:
            self.run.check_wanted()  # raises: the attempt's rows are released
            actions = self.machine.handle(self._next_event())
        return outcome

    def _next_event(self) -> Event:
        """What has arrived is taken before the clock is read: a busy orchestrator must not
        call late what is already in its box."""
        try:
            arrived, message = self.box.get_nowait()
        except queue.Empty:
            tick = Tick(time.perf_counter(), self.run.online())
            if tick.now > self.machine.deadline:
                return tick
            try:
                arrived, message = self.box.get(timeout=POLL_S)
            except queue.Empty:
                return tick
        if isinstance(message, ReportMessage):
            self._mark_report(message)
            return Tick(time.perf_counter(), self.run.online())
        return Arrived(message, arrived)

    def perform(self, actions: list[act.Action]) -> act.Finish | act.Restart | None:
        """Carry out ``actions`` in order; what the attempt answers to a block computed here
        is carried out next, before the rest."""
        run, pending = self.run, deque(actions)
        while pending:
            action, started = pending.popleft(), time.perf_counter()
            if isinstance(action, act.SendProgram):
                self._send_program(action)
            elif isinstance(action, act.SendRows):
                forward = action.forward
                rows = PackedArray(self.holdings.cut(forward.boundary, forward.region), "raw")
                message = RowsMessage(action.program, run.orchestrator, forward.boundary, forward.region, rows)
                topic = DEVICE_ROWS.build(device=forward.to, sender=run.orchestrator, request=action.program)
                run.services.publish(topic, message)
                run.spent("prepare", started, forward.to, None, forward.region)
            elif isinstance(action, act.Keep) and action.answer is not None:
                self.holdings.answers[action.answer] = action.array
            elif isinstance(action, act.Keep):
                assert action.region is not None, "a tile kept has its region"
                self.holdings.keep(action.boundary, action.region, action.array)
                run.spent("merge", started, action.sender, None, action.region)
            elif isinstance(action, act.Compute):  # on the whole map held here; the attempt hears it is done
                self.holdings.compute(run.held.chain, action.block)
                run.spent("gateway", started, "", action.block, self.holdings.whole(action.block.stop))
                pending.extendleft(reversed(self.machine.handle(Computed(action.block.stop, time.perf_counter()))))
            elif isinstance(action, act.Go):
                for device in action.devices:
                    self._tell(device, GoMessage(action.program, run.orchestrator, action.boundary))
            elif isinstance(action, act.Release):
                self.release(action.programs, action.why, action.report)
            elif isinstance(action, act.GiveUp):
                run.give_up_on(set(action.devices), action.why, gone=action.gone)
                log.warning("%s: gave up %s (%s)", run.request, ", ".join(sorted(action.devices)), action.why)
            elif isinstance(action, act.Ignore):
                log.debug("%s: ignored a message from %s: %s", run.request, action.sender, action.why)
            elif isinstance(action, act.Fail):
                raise InferenceError(action.reason)
            else:  # Finish or Restart: the attempt is over
                return action
        return None

    def _tell(self, device: str, message: ProgramMessage | GoMessage | ReleaseMessage) -> None:
        self.run.services.publish(DEVICE_TASKS.build(device=device), message)

    def _send_program(self, action: act.SendProgram) -> None:
        run, work, started = self.run, action.work, time.perf_counter()
        if action.program != self.machine.program:  # a pulled tile: its own id, answered into our box
            run.mail.results[action.program] = self.box
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
        self._tell(action.device, message)
        self.out.add((action.program, action.device))
        run.used.add(action.device)
        block, region = (work.steps[0].block, work.steps[0].out_region) if len(work.steps) == 1 else (None, None)
        run.spent("prepare", started, action.device, block, region)

    def release(self, programs: Sequence[tuple[str, str]], why: str, report: bool = False) -> None:
        """Tell devices to drop programs of the attempt (``report``: and to say how far they
        got); a device that is gone, or one the broker cannot reach, drops them when they expire."""
        for program, device in programs:
            try:
                self._tell(device, ReleaseMessage(program, self.run.orchestrator, why, report))
            except Exception as exc:  # the broker may be gone too; expiry covers it
                log.warning("%s: cannot release %s on %s: %s", self.run.request, program, device, exc)
            self.out.discard((program, device))

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
        # relative to the request's arrival, as every interval on the timeline
        started, computed, sent = (min(max(i - run.wall_offset, run.origin), now) - run.origin for i in instants)
        kind = "compute" if report.block is not None else "tail"
        run.timeline.append(Interval(report.device, kind, started, computed, report.block, report.region))
        if sent > computed:
            run.timeline.append(Interval(report.device, "send", computed, sent, report.block, report.region))
