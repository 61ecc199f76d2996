"""A device's one worker thread: everything slow, in order, oldest request first.

It installs stage weights, runs the ready steps of the programs the store holds (one step
per job: the job queues the request's next step behind older requests' ready ones), makes
tail weights when nothing else waits, and, when idle, sweeps what expired and hands the
heap back. The computation of a step is injectable (``compute``): the default runs the
step's kernels; a test may give one that stalls, fails or records.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.device.bidder import Bidder
from edgeci_mqtt.device.heap import release_heap
from edgeci_mqtt.device.jobs import IDLE, JobQueue
from edgeci_mqtt.device.ledger import WeightsJob, WeightsLedger
from edgeci_mqtt.device.program_state import ReadyStep, Tile
from edgeci_mqtt.device.programs import ValidProgram, outgoing, run_step
from edgeci_mqtt.device.store import FlowStore
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.wire import (
    DEVICE_ROWS,
    RESULTS,
    FailureMessage,
    Message,
    ProgramMessage,
    ProgramStep,
    ReportMessage,
    WorkItem,
    choose_codec,
)

__all__ = ["Compute", "StepJob", "Worker"]

log = logging.getLogger("edgeci.device")

Compute = Callable[[ReadyStep[ValidProgram]], Tile]
"""How a ready step becomes its output (default: :func:`~edgeci_mqtt.device.programs.run_step`)."""


@dataclass(frozen=True)
class StepJob:
    """Run a request's next ready step (the store hands each request to one job at a time;
    the job queues itself again for the step after)."""

    request: str


@dataclass(frozen=True)
class _PrepareJob:
    """Make one more chunk of the tail weights last asked for of a model, when idle."""

    model: str


def results_topic(message: ProgramMessage, device: str) -> str:
    """The device's results topic for a program's request at its orchestrator."""
    return RESULTS.build(orchestrator=message.orchestrator, device=device, request=message.request)


class Worker:
    """The worker of ``device``. ``publish(topic, message)`` sends (raising
    :class:`EdgeCIError` if it cannot); ``announce()`` re-announces the device (a corrected
    speed, tail weights made); ``booking`` is held while a program is booked and stored."""

    def __init__(
        self,
        device: str,
        models: ModelStore,
        store: FlowStore[ValidProgram],
        ledger: WeightsLedger,
        bidder: Bidder,
        publish: Callable[[str, Message], None],
        announce: Callable[[bool], None],
        booking: threading.Lock,
        compress: bool = True,
        threads: int = 1,
        compute: Compute = run_step,
    ) -> None:
        self.device, self.models, self.store, self.ledger, self.bidder = device, models, store, ledger, bidder
        self.publish, self.announce, self.booking = publish, announce, booking
        self.compress, self.threads, self.compute = compress, threads, compute
        self.jobs: JobQueue[WeightsJob | StepJob | _PrepareJob | None] = JobQueue()
        self.resting = True  # nothing to do for a second (written by the worker alone)
        self._worked = False  # since it last fell idle
        self._prepare: dict[str, TailRows] = {}  # model -> tail weights to make when idle (its job queued)
        self._lock = threading.Lock()
        self._unknown_logged = 0

    # ------------------------------------------------------------ from the message thread
    def queue_steps(self, request: str) -> None:
        """The request's next ready step, in the place of its program's arrival."""
        ticket = self.store.ticket(request)
        if ticket is not None:
            self.jobs.put(StepJob(request), ticket)

    def want(self, model: str, wanted: TailRows) -> None:
        """Make these tail weights when nothing else waits (the last asked for wins)."""
        with self._lock:
            queued = model in self._prepare
            self._prepare[model] = wanted
        if not queued:
            self.jobs.put(_PrepareJob(model), IDLE)

    def send_failure(self, message: ProgramMessage, item: int, error: str) -> None:
        """Tell the orchestrator at once (-1: the program was refused), so it re-plans without
        us instead of waiting for its deadline."""
        with contextlib.suppress(EdgeCIError):
            self.publish(
                results_topic(message, self.device), FailureMessage(message.request, self.device, item, error[:4000])
            )

    # ------------------------------------------------------------ the thread
    def run(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            try:
                job = self.jobs.get(timeout=1.0)
            except queue.Empty:
                self._idle()
                continue
            self._worked, self.resting = True, False
            if job is None:
                break
            if isinstance(job, WeightsJob):
                self.ledger.install(job)
            elif isinstance(job, _PrepareJob):
                self._prepare_tail(job)
            else:  # one step, then whichever request is oldest with one ready
                ready = self.store.next_step(job.request, time.perf_counter())
                if ready is not None:
                    self.run_step(ready)
                    self.queue_steps(job.request)
            self.announce(False)

    def stop(self) -> None:
        self.jobs.put(None)

    def _idle(self) -> None:
        self.resting = True
        if self._worked:  # idle after work: what its activations took goes back
            self._worked = False
            release_heap()
        for request in self.store.expire(time.perf_counter()):
            log.warning("%s: request %s expired; its rows are dropped", self.device, request)
        unknown = self.store.counts["dropped_unknown"]
        if unknown > self._unknown_logged:
            log.warning(
                "%s: dropped %d rows messages for unknown requests (%d in all)",
                self.device,
                unknown - self._unknown_logged,
                unknown,
            )
            self._unknown_logged = unknown
        with self.booking:  # a program is booked and stored under this lock: both lists agree
            live = set(self.store.requests())
            gone = [r for r in self.bidder.booked() if r not in live]
        for request in gone:
            self.bidder.unbook(request)  # over here (expired, released, failed) before all its steps ran

    def _prepare_tail(self, job: _PrepareJob) -> None:
        """One chunk of the tail weights wanted, then queued again behind everything while
        more are missing (or others were asked for meanwhile)."""
        with self._lock:
            wanted = self._prepare.get(job.model)
        try:
            more = wanted is not None and self.models.get(job.model).prepare_tail(wanted)
        except Exception:  # making weights must not kill the worker
            log.exception("%s: cannot make the tail weights of %s", self.device, job.model)
            more = False
        with self._lock:
            if not more and self._prepare.get(job.model) is wanted:
                self._prepare.pop(job.model, None)
                return
        self.jobs.put(job, IDLE)

    # ------------------------------------------------------------ one step
    def _codec(self, array: np.ndarray) -> str:
        """The codec that sends ``array`` soonest over our link (raw if compression is off)."""
        if not self.compress:
            return "raw"
        return choose_codec(array, self.bidder.link.bytes_per_s, self.bidder.profile.rates["relu"])

    def _outgoing(self, message: ProgramMessage, item: WorkItem, output: Tile) -> list[tuple[str, Message]]:
        def topic(to: str) -> str:
            if to == message.orchestrator:
                return results_topic(message, self.device)
            return DEVICE_ROWS.build(device=to, sender=self.device, request=message.request)

        return [(topic(to), out) for to, out in outgoing(message, item, output, self.device, self._codec)]

    def _report(
        self, message: ProgramMessage, index: int, item: WorkItem, instants: tuple[float, float, float]
    ) -> None:
        """When we ran an item, on our wall clock, for a traced request's timeline."""
        wall = time.time() - time.perf_counter()
        started, computed, sent = (wall + t for t in instants)
        block, region = (item.block, item.out_region) if isinstance(item, ProgramStep) else (None, None)
        report = ReportMessage(
            message.request,
            self.device,
            index,
            started_at=started,
            computed_at=computed,
            sent_at=sent,
            block=block,
            region=region,
        )
        with contextlib.suppress(EdgeCIError):
            self.publish(results_topic(message, self.device), report)

    def run_step(self, ready: ReadyStep[ValidProgram]) -> None:
        """One work item: compute, send each part of the output where the program says, keep
        what our own later items read. A failure ends the request here and tells the
        orchestrator, which re-plans without us."""
        started = time.perf_counter()
        program, item = ready.context, ready.item
        message = program.message
        results = results_topic(message, self.device)
        try:
            if isinstance(item, ProgramStep):
                self.ledger.check_installed(program.held, item.block, message.digest)
            output = self.compute(ready)
            computed = time.perf_counter()
            if isinstance(item, ProgramStep) and self.bidder.learn(
                program.held, message.input_hw, item.block, item.out_region, computed - started
            ):
                self.announce(True)
            sends = self._outgoing(message, item, output)
            final = any(topic == results for topic, _ in sends)
            if message.trace and final:  # before what ends the request, or it comes too late to count
                self._report(message, ready.index, item, (started, computed, computed))
            for topic, out in sends:
                self.publish(topic, out)
            if message.trace and not final:
                self._report(message, ready.index, item, (started, computed, time.perf_counter()))
            self.store.computed(message.request, ready.index, output)
        except Exception as exc:  # a bad step must not kill the worker
            log.exception("%s: step %d of %s failed", self.device, ready.index, message.request)
            self.store.release(message.request, "failed")
            self.send_failure(message, ready.index, f"{type(exc).__name__}: {exc}")
        finally:
            if isinstance(item, ProgramStep):
                self.bidder.unbook(message.request, ready.index)  # steps come first among a program's items
        log.debug(
            "%s: step %d of %s done in %.1f ms",
            self.device,
            ready.index,
            message.request,
            1e3 * (time.perf_counter() - started),
        )
