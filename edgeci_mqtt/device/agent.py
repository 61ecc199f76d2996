"""The device agent: announce, bid, compute tiles, publish results.

Threads: the bus only enqueues; the agent's main loop decodes and validates every
message and answers auction calls at once from its own profile, link and queue. One
worker thread does everything slow, in order: it verifies, caches and installs stage
weights and runs tile tasks, so no digest check or disk write delays a bid. Anything
malformed or hostile is logged in one line and changes nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from edgeci_mqtt import __version__
from edgeci_mqtt.bus.protocol import Bus, Connected, Inbound, events_until
from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.device.heap import release_heap
from edgeci_mqtt.device.jobs import IDLE, JobQueue
from edgeci_mqtt.device.programs import ValidProgram, outgoing, run_step, validate_program
from edgeci_mqtt.device.store import HOLDING_S, FlowStore, ReadyStep, WorkItem
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.models.held import HeldModel, ModelStore
from edgeci_mqtt.models.stage_weights import WeightCache, checked_stage, materialise, verify
from edgeci_mqtt.planner.awas import make_bid
from edgeci_mqtt.planner.calibration import SpeedCalibration
from edgeci_mqtt.planner.cluster import Link
from edgeci_mqtt.planner.environment import DeviceView, TailRows
from edgeci_mqtt.planner.profile import DeviceProfile
from edgeci_mqtt.text import brief
from edgeci_mqtt.watch.publisher import TrafficPublisher
from edgeci_mqtt.wire import (
    AUCTION_BIDS,
    AUCTION_CALL,
    DEVICE_PROBE,
    DEVICE_ROWS,
    DEVICE_STATE,
    DEVICE_TASKS,
    RESULTS,
    Allowance,
    AuctionCall,
    AuctionLot,
    BidMessage,
    DeviceState,
    Failure,
    GoMessage,
    LotPrices,
    ProgramMessage,
    ProgramStep,
    Progress,
    Reassembler,
    ReleaseMessage,
    RowsMessage,
    StepDone,
    StepReport,
    VectorMessage,
    WeightsMessage,
    choose_codec,
    encode,
)
from edgeci_mqtt.wire.topics import DEVICE_TRAFFIC, WATCHER_STATE

__all__ = ["ROWS_INBOX_BYTES", "DeviceAgent", "block_geometry", "inbox_limits"]

log = logging.getLogger("edgeci.device")

PRICED_LOTS = 1024
"""Auction lots whose prices a device remembers (a request asks for one per block)."""
ROWS_INBOX_BYTES = 8 << 20
"""Rows from other devices received and not yet read by a device's message loop, at most
(its bus drops the rest): the loop refuses unwanted rows from their topic alone, faster
than a link delivers them, so only a flood fills it. What orchestrators send (stage
weights, in bursts of tens of MB) has the bus's own, larger bound."""


WATCHER_INBOX_BYTES = 1 << 20
"""Watchers' states waiting unread (a watcher's credential may write its own as often as it likes)."""


def inbox_limits(device: str) -> dict[str, int]:
    """What may wait unread on ``device``'s bus, by topic filter (``MqttBus(queued_limits=)``)."""
    return {DEVICE_ROWS.filter_with(device=device): ROWS_INBOX_BYTES, WATCHER_STATE.filter: WATCHER_INBOX_BYTES}


REASSEMBLY_BYTES = 256 << 20
"""Incomplete chunked messages held in all: stage weights and images from orchestrators
(rows from devices are bounded far lower, by what our programs wait for)."""
PARTIAL_S = 10.0
"""An incomplete chunked message is dropped this long after its first frame (its frames
are published back to back)."""
EARLY = "rows before their program"
"""The reassembly pool of rows for requests whose program has not arrived."""
LOGGED_PER_WINDOW = 50
TRIM_AFTER_BYTES, QUIET_S = 8 << 20, 1.0
"""After this much inbound data, the heap is given back once nothing arrived for ``QUIET_S``."""


def wire_bytes(float32_bytes: int) -> int:
    """Most a rows message carrying this many float32 bytes may take on the wire: the
    ``zeros`` codec's bitmap (1 bit per 32 data bits) and the message's own fields."""
    return float32_bytes + float32_bytes // 32 + 4096 if float32_bytes else 0


_NOWHERE = TileRegion.whole(1, 1)
"""The region a refusal names when the refused program has no step to name."""


def block_geometry(held: HeldModel, input_hw: tuple[int, int], block: FusedBlock, where: str) -> list[FeatureShape]:
    """The chain's shapes for a message's input size, checked against its block."""
    try:
        shapes = held.shapes(*input_hw)
        block.stages(held.chain.stages)
    except EdgeCIError as exc:
        raise WireError(f"{where}: {exc}") from exc
    return shapes


@dataclass(frozen=True)
class _FlowJob:
    """Run a ``flow`` request's next ready step (the store hands each request to one job at a
    time; the job queues itself again for the step after)."""

    request: str


@dataclass(frozen=True)
class _PrepareJob:
    """Make one more chunk of the tail weights last asked for of a model, when idle."""

    model: str


@dataclass(frozen=True)
class _WeightsJob:
    """Weights of one stage for the worker: from the wire (to verify and cache) or from the cache."""

    held: HeldModel
    digest: str
    stage: str
    message: WeightsMessage | None  # None: load it from the cache


class DeviceAgent:
    """One device on ``bus``: call :meth:`run` until ``stop`` is set.

    Nothing connects or measures here: the caller gives the bus and the device's
    measured profile (``edgeci_mqtt.profiling.measure_profile`` at boot).
    """

    def __init__(
        self,
        device_id: str,
        bus: Bus,
        models: ModelStore,
        profile: DeviceProfile,
        threads: int = 1,
        cache: WeightCache | None = None,
        compress: bool = True,
        tail_memory_bytes: int | None = None,
        calibrate: bool = False,
    ) -> None:
        """``compress``: send ``flow`` rows compressed when that pays (off: always raw).
        ``tail_memory_bytes``: fully connected weights it may be asked to use for a tail
        (announced in its birth message; None: no limit). ``calibrate``: correct the
        announced profile by the time our work really takes (:mod:`edgeci_mqtt.planner.calibration`)."""
        self.state_topic = DEVICE_STATE.build(device=device_id)  # the id must be a valid topic segment
        self.device_id, self.bus, self.models = device_id, bus, models
        self._traffic = TrafficPublisher(bus, device_id, DEVICE_TRAFFIC.build(device=device_id))  # while watched
        self.boot_profile = profile  # what the boot micro-benchmarks measured; ``profile`` is what we announce
        self.calibration = SpeedCalibration() if calibrate else None
        self.threads, self.cache, self.compress = threads, cache, compress
        if tail_memory_bytes is not None and tail_memory_bytes < 0:
            raise EdgeCIError(f"tail memory {tail_memory_bytes} B is negative")
        self.tail_memory_bytes = tail_memory_bytes
        for held in models.held.values():  # the tail rows it makes stay within what it announced
            held.tail_bytes = tail_memory_bytes
        self.tasks_topic = DEVICE_TASKS.build(device=device_id)
        self.link = Link(100.0, 1.0)
        self.tasks: JobQueue[_WeightsJob | _FlowJob | _PrepareJob | None] = JobQueue()
        self._prepare: dict[str, TailRows] = {}  # model -> tail weights to make when idle (its job queued)
        self._announced: dict[str, int] = {}  # model -> its tail_version when last announced
        self._announcing = threading.Lock()
        self.flow: FlowStore[ValidProgram] = FlowStore(device_id)
        self._flow_backlog: dict[str, dict[int, float]] = {}  # request -> predicted seconds of each step not run
        self._unknown_logged = 0
        self._prices: dict[tuple[object, ...], LotPrices] = {}  # lot -> prices
        self._pricing = (0, profile)  # (version, profile), swapped whole: the version keys the prices
        self._backlog_s = 0.0  # predicted seconds of queued and running work
        self._worked = False  # since the worker last fell idle (worker only)
        self._resting = True  # the worker has had nothing to do for a second (written by it alone)
        self._installed: dict[tuple[str, str], str] = {}  # (model, stage) -> digest materialised (worker only)
        self._lock = threading.Lock()
        self._reassembler = Reassembler(max_bytes=REASSEMBLY_BYTES, max_age_s=PARTIAL_S)
        self._inbound = (0, time.perf_counter())  # bytes since the heap was last given back, last arrival
        self._trim_at: float | None = None  # when to give the heap back once more after a burst
        self._quiet: dict[str, tuple[float, int]] = {}  # kind of refusal -> (window started, refusals in it)
        bus.will(self.state_topic, encode(DeviceState(device_id, False, version=__version__)))

    @property
    def profile(self) -> DeviceProfile:
        """The speed we announce: the boot profile, corrected by our work when calibrating."""
        return self._pricing[1]

    # ------------------------------------------------------------ lifecycle
    def run(self, stop: threading.Event) -> None:
        bus = self.bus
        rows = DEVICE_ROWS.filter_with(device=self.device_id)
        for topic in (self.tasks_topic, rows, AUCTION_CALL.filter, DEVICE_PROBE.build(device=self.device_id)):
            bus.subscribe(topic)
        bus.start()
        self.link = self._measure_link()
        bus.subscribe(WATCHER_STATE.filter)  # after the probe (it reads past other events): retained states reach us
        self._birth()
        worker = threading.Thread(target=self._work, name=f"{self.device_id}-worker", daemon=True)
        worker.start()
        log.info("%s: online, holding %s", self.device_id, ", ".join(self.models.held))
        for event in events_until(bus, stop, tick=self._tick):
            if isinstance(event, Connected):
                self._birth()  # a new session: the broker may have fired our will
            elif isinstance(event, Inbound):
                self._handle(event)
        self.tasks.put(None)
        offline = DeviceState(self.device_id, False, version=__version__)
        try:
            bus.publish(self.state_topic, encode(offline), retain=True, wait=2.0)
        except EdgeCIError as exc:  # the broker is gone: our will says it instead
            log.warning("%s: cannot announce going offline: %s", self.device_id, exc)
        self._traffic.stop()
        bus.stop()
        worker.join(timeout=5)
        log.info("%s: offline", self.device_id)

    def _tail_versions(self) -> dict[str, int]:
        return {name: held.tail_version for name, held in self.models.held.items()}

    def _birth(self) -> None:
        with self._announcing:  # from the event thread (a new session) and the worker: the last sent is the latest
            self._announce()

    def _announce(self) -> None:
        self._announced = self._tail_versions()  # before reading them: a change meanwhile is announced again
        tails = {name: held.tail_rows() for name, held in self.models.held.items()}
        state = DeviceState(
            self.device_id,
            True,
            profile=self.profile,
            link=self.link,
            models=self.models.digests,
            version=__version__,
            weights={d: tuple(stages) for d, stages in self.cache.listing().items()} if self.cache else {},
            memory_bytes=self.tail_memory_bytes,
            tails=tails,
        )
        self.bus.publish(self.state_topic, encode(state), retain=True)

    def _measure_link(self) -> Link:
        """Round trips through the broker to our own probe topic: small for latency, 256 KiB
        for bandwidth (both directions cross our link)."""
        topic, bus = DEVICE_PROBE.build(device=self.device_id), self.bus

        def round_trip(size: int) -> float:
            started = time.perf_counter()
            bus.publish(topic, bytes(size), qos=0)
            for event in events_until(bus, deadline=started + 5.0, poll_s=0.1):
                if isinstance(event, Inbound) and event.topic == topic and len(event.payload) == size:
                    return time.perf_counter() - started
            raise EdgeCIError("no answer from the broker to the link probe")

        try:
            small = min(round_trip(16) for _ in range(3))
            big_size = 256 * 1024
            big = min(round_trip(big_size) for _ in range(2))
        except EdgeCIError as exc:
            log.warning("%s: %s; assuming 100 Mbit/s and 1 ms", self.device_id, exc)
            return Link(100.0, 1.0)
        seconds = max(big - small, 1e-6)
        link = Link(min(10_000.0, 2 * big_size * 8 / seconds / 1e6), max(small / 2 * 1e3, 0.01))
        log.info("%s: link %.0f Mbit/s, %.2f ms", self.device_id, link.bandwidth_mbit, link.latency_ms)
        return link

    # ------------------------------------------------------------ messages
    def _tick(self) -> None:
        """On the message thread, about every 0.2 s: incomplete messages expire on the clock,
        and after a burst of inbound data (hostile or not) the heap goes back to the system
        once the burst is over, so an idle device returns to its idle size. Never while the
        worker computes: the activations it frees between layers would fault in anew."""
        self._reassembler.expire()
        if not self._resting:
            return
        received, last = self._inbound
        now = time.perf_counter()
        if received >= TRIM_AFTER_BYTES and now - last >= QUIET_S:
            self._inbound = (0, last)
            self._trim_at = last + HOLDING_S + QUIET_S  # again once what it left waiting has expired
            release_heap()
        elif self._trim_at is not None and now >= self._trim_at:
            self._trim_at = None
            release_heap()

    def _warn(self, kind: str, text: str, *args: object) -> None:
        """A refusal's warning: at most ``LOGGED_PER_WINDOW`` lines of each kind every 10 s,
        then one line counting the rest (a flood's lines, formatted and written one by one,
        would slow the device down as much as the flood itself)."""
        now = time.perf_counter()
        started, logged = self._quiet.get(kind, (-1e9, 0))
        if now - started >= 10.0:
            if logged > LOGGED_PER_WINDOW:
                log.warning("%s: %d more refusals of %s in 10 s", self.device_id, logged - LOGGED_PER_WINDOW, kind)
            started, logged = now, 0
        self._quiet[kind] = (started, logged + 1)
        if logged < LOGGED_PER_WINDOW:
            log.warning(f"%s: {text}", self.device_id, *args)

    def _allowance(self, topic: str) -> Allowance | None:
        """What a message on ``topic`` may bring, known before a frame of it is held: rows
        only what a program of ours still waits for from their sender, or a share of the
        small area for rows that overtook their program; None (no allowance of its own)
        for the orchestrators' topics. :class:`WireError` if the topic may bring nothing."""
        ids = DEVICE_ROWS.parse(topic)
        if ids is None:
            return None
        if ids["device"] != self.device_id:
            raise WireError("rows for another device")
        request, sender = ids["request"], ids["sender"]
        expected = self.flow.expects(request, sender)
        if expected is None:
            return Allowance(f"{EARLY} from {sender}", self.flow.holding_room(sender))
        if expected == 0:
            why = self.flow.ended(request)
            raise WireError(
                f"rows for request {request}, which is over here ({why})"
                if why
                else f"request {request}: no step of {self.device_id} reads anything more from {sender}"
            )
        return Allowance(topic, wire_bytes(expected))

    def _handle(self, event: Inbound) -> None:
        if self._traffic.heard(event):  # a watcher's state: whether to report what we send
            return
        self._inbound = (self._inbound[0] + len(event.payload), time.perf_counter())
        try:
            message = self._reassembler.feed(event.topic, event.payload, self._allowance(event.topic))
        except WireError as exc:
            self._warn(event.topic.rsplit("/", 1)[0], "rejected message on %s: %s", event.topic, exc)
            return
        if message is None:
            return
        try:
            if isinstance(message, AuctionCall) and AUCTION_CALL.parse(event.topic) == {"round": message.round}:
                self._bid(message)
            elif isinstance(message, WeightsMessage) and event.topic == self.tasks_topic:
                self._accept_weights(message)
            elif isinstance(message, RowsMessage | VectorMessage):
                self._accept_rows(message, event.topic)
            elif isinstance(message, ProgramMessage) and event.topic == self.tasks_topic:
                self._accept_program(message)
            elif isinstance(message, GoMessage) and event.topic == self.tasks_topic:
                if self.flow.go(message.request, message.boundary):
                    self._queue_steps(message.request)
            elif isinstance(message, ReleaseMessage) and event.topic == self.tasks_topic:
                if message.report:
                    self._report_progress(message)
                if self.flow.release(message.request, f"released: {message.reason}"):
                    log.info("%s: released request %s (%s)", self.device_id, message.request, brief(message.reason))
                self._unbook(message.request)
            else:
                self._warn(f"ignored {message.kind}", "ignored a %s message on %s", message.kind, event.topic)
        except EdgeCIError as exc:
            self._warn(f"rejected {message.kind}", "rejected %s on %s: %s", message.kind, event.topic, exc)
        except Exception as exc:  # hostile input must never stop the agent
            self._warn(
                f"rejected {message.kind}",
                "rejected %s on %s: %s: %s",
                message.kind,
                event.topic,
                type(exc).__name__,
                exc,
            )

    def _report_progress(self, release: ReleaseMessage) -> None:
        """Before dropping a late request: how far we got, and whose rows we were waiting
        for, so that the orchestrator holds out whoever held it up (not us for waiting)."""
        progress = self.flow.progress(release.request)
        if progress is None:
            return
        item, waiting_for = progress
        report = Progress(release.request, self.device_id, item, waiting_for)
        topic = RESULTS.build(orchestrator=release.orchestrator, device=self.device_id, request=release.request)
        with contextlib.suppress(EdgeCIError):
            self.bus.publish(topic, encode(report))

    def _accept_rows(self, message: RowsMessage | VectorMessage, topic: str) -> None:
        ids = DEVICE_ROWS.parse(topic)
        if ids is None or (ids["device"], ids["sender"], ids["request"]) != (
            self.device_id,
            message.sender,
            message.request,
        ):
            raise WireError(f"rows from {message.sender} do not belong on {topic}")
        if self.flow.add_rows(message, message.sender, time.perf_counter()):
            self._queue_steps(message.request)

    def _accept_program(self, message: ProgramMessage) -> None:
        if self.flow.knows(message.request):
            return  # delivered again (QoS 1): the first copy is in hand
        try:
            program = validate_program(message, self.device_id, self.models, self._has_weights, self.tail_memory_bytes)
            predicted = {
                i: self._seconds(program.held, message.input_hw, s.block, s.out_region)
                for i, s in enumerate(message.steps)
            }
            with self._lock:  # booked and stored at once (the worker's sweep reads both under this lock)
                self._backlog_s += sum(predicted.values())
                self._flow_backlog[message.request] = predicted
                ticket = self.tasks.ticket()
                ready = self.flow.install(message, program.shapes, program, time.perf_counter(), ticket)
        except EdgeCIError as exc:
            self._unbook(message.request)
            self._refuse_program(message, exc)
            raise
        if ready:
            self.tasks.put(_FlowJob(message.request), ticket)
        if message.prepare is not None:
            self._want(message.model, message.prepare)

    def _want(self, model: str, wanted: TailRows) -> None:
        """Make these tail weights when nothing else waits (the last asked for wins)."""
        with self._lock:
            queued = model in self._prepare
            self._prepare[model] = wanted
        if not queued:
            self.tasks.put(_PrepareJob(model), IDLE)

    def _queue_steps(self, request: str) -> None:
        """The worker is to run the request's next ready step, in the place of its program's arrival."""
        ticket = self.flow.ticket(request)
        if ticket is not None:
            self.tasks.put(_FlowJob(request), ticket)

    def _unbook(self, request: str, step: int | None = None) -> None:
        """Take a request's work (one step, or all that is left) out of the backlog we bid with.

        Each step leaves with the seconds it was booked with: a speed corrected in
        between must not leave crumbs in the backlog (they made every bid differ and
        the orchestrator award every request afresh)."""
        with self._lock:
            left = self._flow_backlog.get(request, {})
            done = sum(left.values()) if step is None else left.pop(step, 0.0)
            if step is None or not left:
                self._flow_backlog.pop(request, None)
            self._backlog_s = max(0.0, self._backlog_s - done)

    def _results(self, message: ProgramMessage) -> str:
        """Our results topic for ``message``'s request at its orchestrator."""
        return RESULTS.build(orchestrator=message.orchestrator, device=self.device_id, request=message.request)

    def _refuse_program(self, message: ProgramMessage, reason: Exception) -> None:
        """Tell the orchestrator at once, so it re-plans without us instead of waiting."""
        self._fail(message, -1, f"refused: {reason}")

    def _fail(self, message: ProgramMessage, item: int, error: str) -> None:
        failure = Failure(message.request, self.device_id, item, error[:4000])
        with contextlib.suppress(EdgeCIError):
            self.bus.publish(self._results(message), encode(failure))
            self._traffic.note(self._results(message), failure)

    def _book(self, held: HeldModel, digest: str, stage: str) -> None:
        """Count the stage as held from now on (tasks are validated here, in order, and the
        worker installs the weights before it runs any task queued after them)."""
        assert held.loaded is not None
        with self._lock:
            if held.fetched != digest:
                held.loaded.clear()
                held.fetched = digest
            held.loaded.add(stage)

    def _accept_weights(self, message: WeightsMessage) -> None:
        held = self.models.get(message.model)
        if held.loaded is None:
            raise WireError(f"weights for {message.model} sent to a device that holds its own")
        self._book(held, message.digest, message.stage)
        self.tasks.put(_WeightsJob(held, message.digest, message.stage, message))

    def _has_weights(self, held: HeldModel, digest: str, stage: str) -> bool:
        assert held.loaded is not None
        with self._lock:
            if held.fetched == digest and stage in held.loaded:
                return True
        if self.cache is None or not self.cache.has(digest, stage):
            return False
        self._book(held, digest, stage)
        self.tasks.put(_WeightsJob(held, digest, stage, None))
        return True

    def _view(self) -> DeviceView:
        """Us as a bidder: the backlog to 0.1 ms (what is left of finished work after float
        sums is noise, and equal bids let the orchestrator reuse its awards)."""
        with self._lock:
            backlog = round(self._backlog_s, 4)
        return DeviceView(self.device_id, self.profile, self.link, backlog)

    def _bid(self, call: AuctionCall) -> None:
        """One bid for every lot of the call (a call we cannot price whole gets no bid)."""
        if call.model not in self.models.held:
            return  # we cannot run it: no bid
        if not call.lots:
            raise WireError(f"auction {call.round}: no lots")
        version, profile = self._pricing  # one profile for the whole bid, whatever the worker announces meanwhile
        for lot in call.lots:  # every lot checked before any is priced
            self._check_lot(call, lot)
        prices = tuple(self._lot_prices(call, lot, profile, version) for lot in call.lots)
        message = BidMessage(call.round, self.device_id, self._view().queue_s, prices)
        self.bus.publish(AUCTION_BIDS.build(round=call.round, device=self.device_id), encode(message))

    def _check_lot(self, call: AuctionCall, lot: AuctionLot) -> None:
        held = self.models.get(call.model)
        shapes = block_geometry(held, call.input_hw, lot.block, f"auction {call.round}")
        out_height = shapes[lot.block.stop].height
        if not lot.items:
            raise WireError(f"auction {call.round}: block {lot.block} has no items")
        outside = [item for item in lot.items if item.stop > out_height]
        if outside:
            raise WireError(f"auction {call.round}: item {outside[0]} is outside the {out_height} output rows")

    def _lot_prices(self, call: AuctionCall, lot: AuctionLot, profile: DeviceProfile, version: int) -> LotPrices:
        """Our prices for one lot, computed once per lot and profile (they do not depend on the queue)."""
        held = self.models.get(call.model)
        block = lot.block
        key = (version, call.model, call.input_hw, block, lot.items, call.flow)
        prices = self._prices.get(key)
        if prices is None:
            rows = held.row_model(*call.input_hw)
            bid = make_bid(DeviceView(self.device_id, profile, self.link), rows, block, list(lot.items), call.flow)
            prices = self._prices[key] = LotPrices(bid.alone_s, bid.extend_s)
            if len(self._prices) > PRICED_LOTS:
                self._prices.pop(next(iter(self._prices)))
        return prices

    def _seconds(
        self,
        held: HeldModel,
        input_hw: tuple[int, int],
        block: FusedBlock,
        region: TileRegion,
        profile: DeviceProfile | None = None,
    ) -> float:
        """This device's own estimate of computing ``region`` of ``block`` (counted in its bids' queue)."""
        rows = held.row_model(*input_hw)
        a, b = np.array([region.rows.start]), np.array([region.rows.stop])
        return float(rows.compute_seconds(profile or self.profile, block, a, b)[0])

    def _learn(
        self, held: HeldModel, input_hw: tuple[int, int], block: FusedBlock, region: TileRegion, measured_s: float
    ) -> None:
        """Compare a block's compute time with the boot profile's prediction; announce a
        corrected profile when the running ratio has moved (worker thread)."""
        if self.calibration is None:
            return
        predicted = self._seconds(held, input_hw, block, region, self.boot_profile)
        factor = self.calibration.observe(predicted, measured_s)
        if factor is None:
            return
        self._pricing = (self._pricing[0] + 1, self.boot_profile.scaled(1.0 / factor))
        log.info(
            "%s: work takes %.2fx the boot profile's time; announcing the corrected profile", self.device_id, factor
        )
        try:
            self._birth()
        except Exception as exc:  # a failed announcement must not cost the work that measured it
            log.warning("%s: cannot announce the corrected profile: %s", self.device_id, exc)

    # ------------------------------------------------------------ work
    def _work(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            try:
                job = self.tasks.get(timeout=1.0)
            except queue.Empty:
                self._resting = True
                if self._worked:  # idle after work: what its activations took goes back
                    self._worked = False
                    release_heap()
                for request in self.flow.expire(time.perf_counter()):
                    log.warning("%s: request %s expired; its rows are dropped", self.device_id, request)
                unknown = self.flow.counts["dropped_unknown"]
                if unknown > self._unknown_logged:
                    log.warning(
                        "%s: dropped %d rows messages for unknown requests (%d in all)",
                        self.device_id,
                        unknown - self._unknown_logged,
                        unknown,
                    )
                    self._unknown_logged = unknown
                with self._lock:  # a program is booked and stored under this lock: both lists agree
                    live = set(self.flow.requests())
                    gone = [r for r in self._flow_backlog if r not in live]
                for request in gone:
                    self._unbook(request)  # over here (expired, released, failed) before all its steps ran
                continue
            self._worked, self._resting = True, False
            if job is None:
                break
            if isinstance(job, _WeightsJob):
                self._install(job)
            elif isinstance(job, _PrepareJob):
                self._prepare_tail(job)
            elif isinstance(job, _FlowJob):  # one step, then whichever request is oldest with one ready
                ready = self.flow.next_step(job.request)
                if ready is not None:
                    self._run_step(ready)
                    self._queue_steps(job.request)
            self._announce_tails()

    def _prepare_tail(self, job: _PrepareJob) -> None:
        """One chunk of the tail weights wanted, then queued again behind everything while
        more are missing (or others were asked for meanwhile); the planner learns what we
        hold from our state message."""
        with self._lock:
            wanted = self._prepare.get(job.model)
        try:
            more = wanted is not None and self.models.get(job.model).prepare_tail(wanted)
        except Exception:  # making weights must not kill the worker
            log.exception("%s: cannot make the tail weights of %s", self.device_id, job.model)
            more = False
        with self._lock:
            if not more and self._prepare.get(job.model) is wanted:
                self._prepare.pop(job.model, None)
                return
        self.tasks.put(job, IDLE)

    def _announce_tails(self) -> None:
        """A new state message when the tail weights we hold changed (made for a request,
        made when idle, or dropped for newer ones), so that placements price them."""
        with self._announcing:
            if self._tail_versions() == self._announced:  # after every job: a few integers compared
                return
            try:
                self._announce()
            except EdgeCIError as exc:
                log.warning("%s: cannot announce the tail weights held: %s", self.device_id, exc)

    def _install(self, job: _WeightsJob) -> None:
        """Verify (sha256, keys, shapes), cache and materialise one stage's weights; if
        they are bad, the stage is no longer held and its tasks fail with a clear error."""
        try:
            message = (
                job.message if job.message is not None else (self.cache and self.cache.load(job.digest, job.stage))
            )
            if not message or message.model != job.held.chain.model_name or message.stage != job.stage:
                raise WireError(f"no usable cached weights of stage {job.stage} ({job.digest})")
            module, local = checked_stage(job.held.chain.model, job.stage, verify(message))
            if job.message is not None and self.cache is not None:
                self.cache.save(message)
            materialise(module, local)
        except (EdgeCIError, OSError) as exc:
            self._rebook(job, held=False)
            log.warning("%s: weights of stage %s rejected: %s", self.device_id, job.stage, exc)
            return
        self._installed[(job.held.chain.model_name, job.stage)] = job.digest
        self._rebook(job, held=True)
        size = sum(a.nbytes for a in message.tensors.values())
        log.info("%s: loaded %s stage %s (%.1f MB)", self.device_id, message.model, job.stage, size / 1e6)

    def _rebook(self, job: _WeightsJob, held: bool) -> None:
        """After the worker tried a stage's weights: held (again) or not, if they are still the digest in use."""
        with self._lock:
            if job.held.loaded is not None and job.held.fetched == job.digest:
                (job.held.loaded.add if held else job.held.loaded.discard)(job.stage)

    def _codec(self, array: np.ndarray) -> str:
        """The codec that sends ``array`` soonest over our link (raw if compression is off)."""
        return choose_codec(array, self.link.bytes_per_s, self.profile.rates["relu"]) if self.compress else "raw"

    def _outgoing(
        self, message: ProgramMessage, item: WorkItem, output: np.ndarray
    ) -> list[tuple[str, RowsMessage | VectorMessage | StepDone]]:
        def topic(to: str) -> str:
            if to == message.orchestrator:
                return self._results(message)
            return DEVICE_ROWS.build(device=to, sender=self.device_id, request=message.request)

        return [(topic(to), out) for to, out in outgoing(message, item, output, self.device_id, self._codec)]

    def _report(
        self, message: ProgramMessage, index: int, item: WorkItem, started: float, computed: float, sent: float
    ) -> None:
        """When we ran an item, on our wall clock, for a traced request's timeline."""
        wall = time.time() - time.perf_counter()
        block, region = (item.block, item.out_region) if isinstance(item, ProgramStep) else (None, None)
        report = StepReport(
            message.request, self.device_id, index, wall + started, wall + computed, wall + sent, block, region
        )
        with contextlib.suppress(EdgeCIError):
            self.bus.publish(self._results(message), encode(report))
            self._traffic.note(self._results(message), report)

    def _check_installed(self, held: HeldModel, block: FusedBlock, digest: str) -> None:
        """For a fetching device: the weights a block needs are the ones materialised now."""
        if held.loaded is None:
            return
        model = held.chain.model_name
        stale = [s for s in held.weighted_stages(block) if self._installed.get((model, s)) != digest]
        if stale:
            raise WireError(f"weights of stage {stale[0]} ({digest}) are not installed")

    def _run_step(self, ready: ReadyStep[ValidProgram]) -> None:
        """One ``flow`` work item: compute, send each part of the output where the program
        says, keep what our own later items read. A failure ends the request here and tells
        the orchestrator, which re-plans without us."""
        started = time.perf_counter()
        program, item = ready.context, ready.item
        message = program.message
        results = self._results(message)
        try:
            if isinstance(item, ProgramStep):
                self._check_installed(program.held, item.block, message.digest)
            output = run_step(ready)
            computed = time.perf_counter()
            if isinstance(item, ProgramStep):
                self._learn(program.held, message.input_hw, item.block, item.out_region, computed - started)
            outgoing = self._outgoing(message, item, output)
            final = any(topic == results for topic, _ in outgoing)
            if message.trace and final:  # before what ends the request, or it comes too late to count
                self._report(message, ready.index, item, started, computed, computed)
            for topic, out in outgoing:
                self.bus.publish(topic, payload := encode(out))
                self._traffic.note(topic, out, len(payload))
            if message.trace and not final:
                self._report(message, ready.index, item, started, computed, time.perf_counter())
            self.flow.computed(message.request, ready.index, output)
        except Exception as exc:  # a bad step must not kill the worker
            log.exception("%s: step %d of %s failed", self.device_id, ready.index, message.request)
            self.flow.release(message.request, "failed")
            self._fail(message, ready.index, f"{type(exc).__name__}: {exc}")
        finally:
            if isinstance(item, ProgramStep):
                self._unbook(message.request, ready.index)  # steps come first among a program's items
        log.debug(
            "%s: step %d of %s done in %.1f ms",
            self.device_id,
            ready.index,
            message.request,
            1e3 * (time.perf_counter() - started),
        )
