"""A device's one worker thread: everything slow, in order, oldest request first.

It installs stage weights, runs the ready steps of the programs the store holds (one per
job, ``compute`` injectable: a test may stall, fail or record), makes tail weights when
nothing else waits, and, when idle, sweeps what expired and hands the heap back.

Oldest request first: in arrival order alone, whole requests of a stream that arrived
later would delay every step of a split request on the same devices, which would run past
its deadline on devices that are busy, not lost (docs/RUNTIME.md, `flow`, devices). So
every job carries a ticket, a request's that of its program; work nobody waits for (tail
weights made ahead of a placement) takes :data:`IDLE`: it runs only when nothing else is
queued, one short piece per job.

Stage weights (:class:`WeightsLedger`): a fetching device books a stage as held the moment
its weights message arrives (programs are validated in order, and the worker installs the
weights before any step queued after them); the worker verifies, caches and materialises
them, and un-books them if bad, so a step needing them fails with a clear error instead
of computing with the wrong numbers.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.device.bidder import Bidder
from edgeci_mqtt.device.heap import release_heap
from edgeci_mqtt.device.programs import ReadyStep, Tile, ValidProgram, outgoing, run_step
from edgeci_mqtt.device.store import FlowStore
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.models.held import HeldModel, ModelStore
from edgeci_mqtt.models.stage_weights import WeightCache, checked_stage, materialise, verify
from edgeci_mqtt.wire import FailureMessage, Message, ProgressMessage, ReportMessage, WeightsMessage, choose_codec
from edgeci_mqtt.wire.programs import ProgramMessage, ProgramStep, ReleaseMessage
from edgeci_mqtt.wire.topics import DEVICE_ROWS, RESULTS

__all__ = ["IDLE", "Compute", "JobQueue", "WeightsJob", "WeightsLedger", "Worker"]

log = logging.getLogger("edgeci.device")

J = TypeVar("J")

IDLE = 1 << 62
"""A ticket later than any request's: the job waits until nothing else is queued."""

Compute = Callable[[ReadyStep[ValidProgram]], Tile]
"""How a ready step becomes its output (default: :func:`~edgeci_mqtt.device.programs.run_step`)."""


class JobQueue(Generic[J]):
    """Jobs served by ticket, lowest first, the earliest queued among equals (thread-safe)."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, J]] = queue.PriorityQueue()
        self._count = itertools.count()

    def ticket(self) -> int:
        """The next ticket: later than every job queued so far."""
        return next(self._count)

    def put(self, job: J, ticket: int | None = None) -> None:
        """Queue ``job`` with ``ticket`` (default: a new one, i.e. after everything queued)."""
        arrival = next(self._count)
        self._queue.put((arrival if ticket is None else ticket, arrival, job))

    def __len__(self) -> int:
        """Jobs waiting (approximately, as another thread may be taking one)."""
        return self._queue.qsize()

    def get(self, timeout: float) -> J:
        """The job with the lowest ticket; :class:`queue.Empty` after ``timeout`` seconds without one."""
        return self._queue.get(timeout=timeout)[2]


@dataclass(frozen=True)
class WeightsJob:
    """Weights of one stage for the worker: from the wire (to verify and cache) or from the cache."""

    held: HeldModel
    digest: str
    stage: str
    message: WeightsMessage | None  # None: load it from the cache


class WeightsLedger:
    """Which stage weights are held (booked), and which are installed; ``put(job)`` hands
    the worker the weights to install."""

    def __init__(self, device: str, models: ModelStore, cache: WeightCache | None, put: Callable[[WeightsJob], None]):
        self.device, self.models, self.cache, self.put = device, models, cache, put
        self._installed: dict[tuple[str, str], str] = {}  # (model, stage) -> digest materialised (worker only)
        self._lock = threading.Lock()

    def listing(self) -> dict[str, tuple[str, ...]]:
        """Stages on disk by digest, for the device's announcement."""
        return {d: tuple(stages) for d, stages in self.cache.listing().items()} if self.cache else {}

    def accept(self, message: WeightsMessage) -> None:
        """Stage weights from an orchestrator: booked now, installed by the worker."""
        held = self.models.get(message.model)
        if held.loaded is None:
            raise WireError(f"weights for {message.model} sent to a device that holds its own")
        self._book(held, message.digest, message.stage, message)

    def has(self, held: HeldModel, digest: str, stage: str) -> bool:
        """Whether the stage's weights of ``digest`` are held, on their way, or on disk (then
        booked and queued to be loaded)."""
        assert held.loaded is not None
        with self._lock:
            if held.fetched == digest and stage in held.loaded:
                return True
        if self.cache is None or not self.cache.has(digest, stage):
            return False
        self._book(held, digest, stage, None)
        return True

    def _book(self, held: HeldModel, digest: str, stage: str, message: WeightsMessage | None) -> None:
        """Held from now on; the worker installs them from ``message`` (None: from the cache)."""
        assert held.loaded is not None
        with self._lock:
            if held.fetched != digest:
                held.loaded.clear()
                held.fetched = digest
            held.loaded.add(stage)
        self.put(WeightsJob(held, digest, stage, message))

    def install(self, job: WeightsJob) -> None:
        """Verify (sha256, keys, shapes), cache and materialise one stage's weights; if
        they are bad, the stage is no longer held."""
        held, cache = job.held, self.cache
        try:
            message = job.message if job.message is not None else (cache and cache.load(job.digest, job.stage))
            if not message or message.model != held.chain.model_name or message.stage != job.stage:
                raise WireError(f"no usable cached weights of stage {job.stage} ({job.digest})")
            module, local = checked_stage(held.chain.model, job.stage, verify(message))
            if job.message is not None and cache is not None:
                cache.save(message)
            materialise(module, local)
        except (EdgeCIError, OSError) as exc:
            log.warning("%s: weights of stage %s rejected: %s", self.device, job.stage, exc)
            message = None
        else:
            self._installed[(held.chain.model_name, job.stage)] = job.digest
            size = sum(a.nbytes for a in message.tensors.values())
            log.info("%s: loaded %s stage %s (%.1f MB)", self.device, message.model, job.stage, size / 1e6)
        with self._lock:  # held (again) or not, if they are still the digest in use
            if held.loaded is not None and held.fetched == job.digest:
                (held.loaded.add if message else held.loaded.discard)(job.stage)

    def check_installed(self, held: HeldModel, block: FusedBlock, digest: str) -> None:
        """For a fetching device: the weights a block needs are the ones materialised now."""
        if held.loaded is None:
            return
        stale = [s for s in held.weighted_stages(block) if self._installed.get((held.chain.model_name, s)) != digest]
        if stale:
            raise WireError(f"weights of stage {stale[0]} ({digest}) are not installed")


@dataclass(frozen=True)
class _PrepareJob:
    """Make one more chunk of the tail weights last asked for of a model, when idle."""

    model: str


class Worker:
    """The worker of ``device`` (its models: the ``bidder``'s), with what feeds it: the store of
    its programs (which hands it the requests ready) and the ledger of its stage weights
    (``cache``: where they are kept on disk). ``publish(topic, message)`` sends (raising
    :class:`EdgeCIError` if it cannot); ``announce(always)`` re-announces the device if
    anything changed (after every job; ``always``: a corrected speed)."""

    def __init__(
        self,
        device: str,
        bidder: Bidder,
        cache: WeightCache | None,
        publish: Callable[[str, Message], None],
        announce: Callable[[bool], None],
        compress: bool = True,
        threads: int = 1,
        compute: Compute = run_step,
    ) -> None:
        self.device, self.models, self.bidder = device, bidder.models, bidder
        self.publish, self.announce = publish, announce
        self.compress, self.threads, self.compute = compress, threads, compute
        self.jobs: JobQueue[WeightsJob | str | _PrepareJob | None] = JobQueue()  # str: a request's next step
        self.store: FlowStore[ValidProgram] = FlowStore(device, on_ready=self.jobs.put, on_end=bidder.unbook)
        self.ledger = WeightsLedger(device, self.models, cache, self.jobs.put)  # it books; we install
        self.resting = True  # nothing to do for a second (written by the worker alone)
        self._worked = False  # since it last fell idle
        self._prepare: dict[str, TailRows] = {}  # model -> tail weights to make when idle (its job queued)
        self._lock = threading.Lock()
        self._unknown_logged = 0

    # ------------------------------------------------------------ from the message thread
    def want(self, model: str, wanted: TailRows) -> None:
        """Make these tail weights when nothing else waits (the last asked for wins)."""
        with self._lock:
            if model not in self._prepare:
                self.jobs.put(_PrepareJob(model), IDLE)
            self._prepare[model] = wanted

    def send_failure(self, message: ProgramMessage, item: int, error: str) -> None:
        """Tell the orchestrator at once (-1: the program was refused), so it re-plans without
        us instead of waiting for its deadline."""
        self._tell(message, FailureMessage(message.request, self.device, item, error[:4000]))

    def send_progress(self, release: ReleaseMessage) -> None:
        """Before a late request is dropped: how far we got, and whose rows we were waiting
        for, so that the orchestrator holds out whoever held it up (not us for waiting)."""
        progress = self.store.progress(release.request)
        if progress is not None:
            self._tell(release, ProgressMessage(release.request, self.device, *progress))

    def _tell(self, about: ProgramMessage | ReleaseMessage, message: Message) -> None:
        """Send ``message`` to the orchestrator of ``about``'s request, if we can."""
        with contextlib.suppress(EdgeCIError):
            self.publish(self._topic(about, about.orchestrator), message)

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
            else:  # a request's next step (the store queues it again, with its program's ticket, while it has more)
                ready = self.store.next_step(job, time.perf_counter())
                if ready is not None:
                    self.run_step(ready)
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
            new, self._unknown_logged = unknown - self._unknown_logged, unknown
            log.warning("%s: dropped %d rows messages for unknown requests (%d in all)", self.device, new, unknown)

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
            if more or self._prepare.get(job.model) is not wanted:
                self.jobs.put(job, IDLE)
            else:
                self._prepare.pop(job.model, None)

    # ------------------------------------------------------------ one step
    def _topic(self, message: ProgramMessage | ReleaseMessage, to: str) -> str:
        """Where what we send ``to`` about a request goes: the orchestrator's results topic, or a device's rows."""
        if to == message.orchestrator:
            return RESULTS.build(orchestrator=to, device=self.device, request=message.request)
        return DEVICE_ROWS.build(device=to, sender=self.device, request=message.request)

    def _codec(self, array: Tile) -> str:
        """The codec that sends ``array`` soonest over our link (raw if compression is off)."""
        link, relu = self.bidder.link.bytes_per_s, self.bidder.profile.rates["relu"]
        return choose_codec(array, link, relu) if self.compress else "raw"

    def _report(self, message: ProgramMessage, index: int, step: ProgramStep | None, *instants: float) -> None:
        """When we ran an item (started, computed, sent), on our wall clock, for a traced request's timeline."""
        wall = time.time() - time.perf_counter()
        started, computed, sent = (wall + t for t in instants)
        report = ReportMessage(
            message.request,
            self.device,
            index,
            started_at=started,
            computed_at=computed,
            sent_at=sent,
            block=None if step is None else step.block,
            region=None if step is None else step.out_region,
        )
        self._tell(message, report)

    def run_step(self, ready: ReadyStep[ValidProgram]) -> None:
        """One work item: compute, send each part of the output where the program says, keep
        what our own later items read. A failure ends the request here and tells the
        orchestrator, which re-plans without us."""
        started = time.perf_counter()
        program, item, message = ready.context, ready.item, ready.context.message
        step = item if isinstance(item, ProgramStep) else None
        try:
            if step is not None:
                self.ledger.check_installed(program.held, step.block, message.digest)
            output = self.compute(ready)
            computed = time.perf_counter()
            if step is not None and self.bidder.learn(program, step, computed - started):
                self.announce(True)
            sends = outgoing(message, item, output, self.device, self._codec)
            final = any(to == message.orchestrator for to, _ in sends)
            if message.trace and final:  # before what ends the request, or it comes too late to count
                self._report(message, ready.index, step, started, computed, computed)
            for to, out in sends:
                self.publish(self._topic(message, to), out)
            if message.trace and not final:
                self._report(message, ready.index, step, started, computed, time.perf_counter())
            self.store.computed(message.request, ready.index, output)
        except Exception as exc:  # a bad step must not kill the worker
            log.exception("%s: step %d of %s failed", self.device, ready.index, message.request)
            self.store.release(message.request, "failed")
            self.send_failure(message, ready.index, f"{type(exc).__name__}: {exc}")
        finally:
            if step is not None:
                self.bidder.unbook(message.request, ready.index)  # steps come first among a program's items
        ms = 1e3 * (time.perf_counter() - started)
        log.debug("%s: step %d of %s done in %.1f ms", self.device, ready.index, message.request, ms)
