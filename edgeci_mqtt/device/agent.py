"""The device agent: its message loop, its announcements, and what it accepts.

Threads: the bus only enqueues; the agent's loop decodes and validates every message,
answers auction calls at once (:class:`~edgeci_mqtt.device.bidder.Bidder`), books stage
weights (:class:`~edgeci_mqtt.device.worker.WeightsLedger`) and stores programs and rows
(:class:`~edgeci_mqtt.device.store.FlowStore`); one :class:`~edgeci_mqtt.device.worker.Worker`
does everything slow, in order, so no digest check, disk write or step delays a bid.
Anything malformed or hostile is logged in one line and changes nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from edgeci_mqtt import __version__
from edgeci_mqtt.bus.protocol import Bus, Connected, Inbound, events_until
from edgeci_mqtt.core.link import Link, Medium
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.device.bidder import ASSUMED_LINK, Bidder
from edgeci_mqtt.device.heap import HeapKeeper
from edgeci_mqtt.device.programs import ValidProgram, run_step, validate_program
from edgeci_mqtt.device.store import HOLDING_S, FlowStore
from edgeci_mqtt.device.worker import Compute, Worker
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.models.stage_weights import WeightCache
from edgeci_mqtt.text import brief
from edgeci_mqtt.watch.traffic import TrafficPublisher
from edgeci_mqtt.wire import AUCTION_BIDS, AUCTION_CALL, DEVICE_PROBE, DEVICE_ROWS, DEVICE_STATE, DEVICE_TASKS
from edgeci_mqtt.wire.framing import Allowance, Reassembler
from edgeci_mqtt.wire.messages import CallMessage, DeviceStateMessage, WeightsMessage, encode
from edgeci_mqtt.wire.programs import GoMessage, ProgramMessage, ReleaseMessage, RowsMessage, VectorMessage
from edgeci_mqtt.wire.topics import DEVICE_TRAFFIC, WATCHER_STATE

__all__ = ["EARLY", "ROWS_INBOX_BYTES", "DeviceAgent", "inbox_limits", "measure_link", "rows_allowance", "wire_bytes"]

log = logging.getLogger("edgeci.device")

ROWS_INBOX_BYTES = 8 << 20
"""Rows received and not yet read by a device's message loop, at most (its bus drops the
rest): the loop refuses unwanted rows from their topic alone, faster than a link delivers
them, so only a flood fills it. What orchestrators send on the tasks topic (stage weights,
in bursts of tens of MB) has the bus's own, larger bound."""
WATCHER_INBOX_BYTES = 1 << 20
"""Watchers' states waiting unread (a watcher's credential may write its own as often as it likes)."""
REASSEMBLY_BYTES = 256 << 20
"""Incomplete chunked messages held in all (rows are bounded far lower, by what our programs wait for)."""
PARTIAL_S = 10.0
"""An incomplete chunked message is dropped this long after its first frame (its frames come back to back)."""
EARLY = "rows before their program"
"""The reassembly pool of rows for requests whose program has not arrived."""
LOGGED_PER_WINDOW = 50
"""Refusals of one kind logged every 10 s, at most, then one line counting the rest (a
flood's lines, formatted and written one by one, would slow the device down as much as
the flood itself)."""


def inbox_limits(device: str) -> dict[str, int]:
    """What may wait unread on ``device``'s bus, by topic filter (``MqttBus(queued_limits=)``)."""
    return {DEVICE_ROWS.filter_with(device=device): ROWS_INBOX_BYTES, WATCHER_STATE.filter: WATCHER_INBOX_BYTES}


def wire_bytes(float32_bytes: int) -> int:
    """Most a rows message carrying this many float32 bytes may take on the wire: the
    ``zeros`` codec's bitmap (1 bit per 32 data bits) and the message's own fields."""
    return float32_bytes + float32_bytes // 32 + 4096 if float32_bytes else 0


def rows_allowance(store: FlowStore[ValidProgram], device: str, topic: str) -> Allowance | None:
    """What a message on ``topic`` may bring, known before a frame of it is held: rows
    only what a program of ours still waits for from their sender, or a share of the
    small area for rows that overtook their program; None (no allowance of its own)
    for the orchestrators' topics. :class:`WireError` if the topic may bring nothing."""
    ids = DEVICE_ROWS.parse(topic)
    if ids is None:
        return None
    if ids["device"] != device:
        raise WireError("rows for another device")
    request, sender = ids["request"], ids["sender"]
    expected = store.expects(request, sender)
    if expected is None:
        return Allowance(f"{EARLY} from {sender}", store.holding_room(sender))
    if expected == 0 and (why := store.ended(request)):
        raise WireError(f"rows for request {request}, which is over here ({why})")
    if expected == 0:
        raise WireError(f"request {request}: no step of {device} reads anything more from {sender}")
    return Allowance(topic, wire_bytes(expected))


def measure_link(bus: Bus, device: str) -> Link:
    """Round trips through the broker to the device's own probe topic: small for latency,
    256 KiB for bandwidth (both directions cross its link); assumed if the broker does not answer."""
    topic, big_size = DEVICE_PROBE.build(device=device), 256 * 1024

    def round_trip(size: int) -> float:
        started = time.perf_counter()
        bus.publish(topic, bytes(size), qos=0)
        for event in events_until(bus, deadline=started + 5.0, poll_s=0.1):
            if isinstance(event, Inbound) and event.topic == topic and len(event.payload) == size:
                return time.perf_counter() - started
        raise EdgeCIError("no answer from the broker to the link probe")

    try:
        small = min(round_trip(16) for _ in range(3))
        big = min(round_trip(big_size) for _ in range(2))
    except EdgeCIError as exc:
        log.warning("%s: %s; assuming 100 Mbit/s and 1 ms", device, exc)
        return ASSUMED_LINK
    link = Link(min(10_000.0, 2 * big_size * 8 / max(big - small, 1e-6) / 1e6), max(small / 2 * 1e3, 0.01))
    log.info("%s: link %.0f Mbit/s, %.2f ms", device, link.bandwidth_mbit, link.latency_ms)
    return link


class DeviceAgent:
    """One device on ``bus``: call :meth:`run` until ``stop`` is set. Nothing connects or
    measures here: the caller gives the bus and the device's measured profile
    (``edgeci_mqtt.profiling.measure_profile`` at boot). ``compress``: send rows compressed
    when that pays (off: always raw). ``tail_memory_bytes``: fully connected weights it may
    be asked to use for a tail (announced in its birth message; None: no limit).
    ``calibrate``: correct the announced profile by the time our work really takes.
    ``compute``: how the worker computes a ready step (the seam tests use for a device that stalls)."""

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
        compute: Compute = run_step,
        medium: Medium | None = None,
    ) -> None:
        self.state_topic = DEVICE_STATE.build(device=device_id)  # the id must be a valid topic segment
        self.device_id, self.bus, self.models = device_id, bus, models
        self._traffic = TrafficPublisher(bus, device_id, DEVICE_TRAFFIC.build(device=device_id))  # while watched
        if tail_memory_bytes is not None and tail_memory_bytes < 0:
            raise EdgeCIError(f"tail memory {tail_memory_bytes} B is negative")
        self.tail_memory_bytes = tail_memory_bytes
        for held in models.held.values():  # the tail rows it makes stay within what it announced
            held.tail_bytes = tail_memory_bytes
        self.tasks_topic = DEVICE_TASKS.build(device=device_id)
        self.medium = medium  # the shared medium it sits behind, as configured (no probe can tell)
        self.bidder = Bidder(device_id, models, profile, calibrate)
        publish = self._traffic.publish
        self.worker = Worker(device_id, self.bidder, cache, publish, self._announce, compress, threads, compute)
        self.store, self.ledger = self.worker.store, self.worker.ledger
        self._announced: dict[str, int] = {}  # model -> its tail_version when last announced
        self._announcing = threading.Lock()
        self._refusals: dict[str, tuple[float, int]] = {}  # kind -> (window started, refusals in it)
        self.reassembler = Reassembler(max_bytes=REASSEMBLY_BYTES, max_age_s=PARTIAL_S)
        self.heap = HeapKeeper(again_s=HOLDING_S)
        self._offline = DeviceStateMessage(device_id, False, version=__version__)
        bus.will(self.state_topic, encode(self._offline))

    # ------------------------------------------------------------ lifecycle
    def run(self, stop: threading.Event) -> None:
        bus = self.bus
        rows = DEVICE_ROWS.filter_with(device=self.device_id)
        for topic in (self.tasks_topic, rows, AUCTION_CALL.filter, DEVICE_PROBE.build(device=self.device_id)):
            bus.subscribe(topic)
        bus.start()
        self.bidder.link = replace(measure_link(bus, self.device_id), medium=self.medium)
        if (medium := self.medium) is not None:
            log.info("%s: behind medium %s (%g Mbit/s shared)", self.device_id, medium.name, medium.bandwidth_mbit)
        bus.subscribe(WATCHER_STATE.filter)  # after the probe (it reads past other events): retained states reach us
        self._announce()
        worker = threading.Thread(target=self.worker.run, name=f"{self.device_id}-worker", daemon=True)
        worker.start()
        log.info("%s: online, holding %s", self.device_id, ", ".join(self.models.held))
        for event in events_until(bus, stop, tick=self._tick):
            if isinstance(event, Connected):
                self._announce()  # a new session: the broker may have fired our will
            elif isinstance(event, Inbound):
                self._handle(event)
        self.worker.stop()  # if the broker is gone, our will says we are offline instead
        self._traffic.publish(self.state_topic, self._offline, "announce going offline", retain=True, wait=2.0)
        self._traffic.stop()
        bus.stop()
        worker.join(timeout=5)
        log.info("%s: offline", self.device_id)

    # ------------------------------------------------------------ announcements
    def _announce(self, always: bool = True) -> None:
        """Our state, retained: at birth and on every new session; from the worker, after
        every job, with a corrected speed (``always``) or if tail weights were made or dropped
        (a few integers compared), so that placements price them. A failed announcement
        is logged: it must not cost the work that led to it."""
        with self._announcing:  # from the event thread and the worker: the last sent is the latest
            versions = {name: held.tail_version for name, held in self.models.held.items()}
            if not always and versions == self._announced:
                return
            self._announced = versions  # before reading the tails: a change meanwhile is announced again
            state = DeviceStateMessage(
                self.device_id,
                True,
                profile=self.bidder.profile,
                link=self.bidder.link,
                models=self.models.digests,
                version=__version__,
                weights=self.ledger.listing(),
                memory_bytes=self.tail_memory_bytes,
                tails={name: held.tail_rows() for name, held in self.models.held.items()},
            )
            self._traffic.publish(self.state_topic, state, "announce our state", retain=True)

    # ------------------------------------------------------------ messages
    def _tick(self) -> None:
        """About every 0.2 s: incomplete messages expire, and the heap goes back after a burst (:class:`HeapKeeper`)."""
        self.reassembler.expire()
        self.heap.tick(time.perf_counter(), self.worker.resting)

    def _warn(self, kind: str, text: str, *args: object) -> None:
        """A refusal's warning, at most ``LOGGED_PER_WINDOW`` of each ``kind`` every 10 s."""
        now = time.perf_counter()
        started, logged = self._refusals.get(kind, (-1e9, 0))
        if now - started >= 10.0:
            if logged > LOGGED_PER_WINDOW:
                log.warning("%s: %d more refusals of %s in 10 s", self.device_id, logged - LOGGED_PER_WINDOW, kind)
            started, logged = now, 0
        self._refusals[kind] = (started, logged + 1)
        if logged < LOGGED_PER_WINDOW:
            log.warning(f"%s: {text}", self.device_id, *args)

    def _handle(self, event: Inbound) -> None:
        if self._traffic.heard(event):  # a watcher's state: whether to report what we send
            return
        self.heap.arrived(len(event.payload), time.perf_counter())
        try:
            allowance = rows_allowance(self.store, self.device_id, event.topic)
            message = self.reassembler.feed(event.topic, event.payload, allowance)
        except WireError as exc:
            self._warn(event.topic.rsplit("/", 1)[0], "rejected message on %s: %s", event.topic, exc)
            return
        if message is None:
            return
        tasks = event.topic == self.tasks_topic
        try:
            if isinstance(message, CallMessage) and AUCTION_CALL.parse(event.topic) == {"round": message.round}:
                if (bid := self.bidder.bid(message)) is not None:
                    self._traffic.publish(AUCTION_BIDS.build(round=message.round, device=self.device_id), bid)
            elif isinstance(message, RowsMessage | VectorMessage):
                ids = {"device": self.device_id, "sender": message.sender, "request": message.request}
                if DEVICE_ROWS.parse(event.topic) != ids:
                    raise WireError(f"rows from {message.sender} do not belong on {event.topic}")
                self.store.add_rows(message, message.sender, time.perf_counter())
            elif isinstance(message, WeightsMessage) and tasks:
                self.ledger.accept(message)
            elif isinstance(message, ProgramMessage) and tasks:
                self._accept_program(message)
            elif isinstance(message, GoMessage) and tasks:
                self.store.go(message.request, message.boundary)
            elif isinstance(message, ReleaseMessage) and tasks:
                if message.report:
                    self.worker.send_progress(message)
                if self.store.release(message.request, f"released: {message.reason}"):
                    log.info("%s: released request %s (%s)", self.device_id, message.request, brief(message.reason))
            else:
                self._warn(f"ignored {message.kind}", "ignored a %s message on %s", message.kind, event.topic)
        except Exception as exc:  # hostile input must never stop the agent
            why = exc if isinstance(exc, EdgeCIError) else f"{type(exc).__name__}: {exc}"
            self._warn(f"rejected {message.kind}", "rejected %s on %s: %s", message.kind, event.topic, why)

    def _accept_program(self, message: ProgramMessage) -> None:
        if self.store.knows(message.request):
            return  # delivered again (QoS 1): the first copy is in hand
        try:
            program = validate_program(message, self.device_id, self.models, self.ledger.has, self.tail_memory_bytes)
            self.bidder.book(program)  # before it is stored: it leaves the backlog when it ends here
            self.store.install(message, program.shapes, program, time.perf_counter(), self.worker.jobs.ticket())
        except EdgeCIError as exc:
            self.bidder.unbook(message.request)
            self.worker.send_failure(message, -1, f"refused: {exc}")
            raise
        if message.prepare is not None:
            self.worker.want(message.model, message.prepare)
