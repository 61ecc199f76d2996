"""The orchestrator (auctioneer): the dispatcher, admission, answers, and the runs that serve requests.

A dispatcher loop reads the bus's events: retained device states keep the live
:class:`~edgeci_mqtt.orchestrator.device_table.DeviceTable` (every membership change bumps
its generation, so the next request is re-planned:
:class:`~edgeci_mqtt.orchestrator.plans.PlanCache`), bids and results go to the running
inference's mailboxes, requests to a queue served by ``IN_FLIGHT`` worker threads.
Requests arrive through the MQTT v5 shared subscription, so several orchestrators share
the load; each answers on the request's response topic with its correlation data.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from functools import partial

import msgpack
import torch

from edgeci_mqtt.bus.protocol import Bus, Connected, Inbound, events_until
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.imaging import check_image
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.device_table import DeviceTable, WeightsSender
from edgeci_mqtt.orchestrator.mailboxes import Admitted, FairQueue, Inbox, Mailboxes
from edgeci_mqtt.orchestrator.penalties import Penalties
from edgeci_mqtt.orchestrator.plans import PlanCache
from edgeci_mqtt.orchestrator.run import MIN_TASK_DEADLINE_S, Run, RunServices, RunSetup
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.planner.strategy import Strategy
from edgeci_mqtt.watch.traffic import TrafficPublisher
from edgeci_mqtt.wire import (
    AUCTION_BIDS,
    CLIENT_RESPONSES,
    DEVICE_STATE,
    INFER_REQUESTS,
    MAX_FRAME_BYTES,
    MAX_INPUT_SIDE,
    ORCHESTRATOR_PENALTIES,
    ORCHESTRATOR_STATE,
    RESULTS,
    SHARED_REQUESTS,
    AcceptedMessage,
    BidMessage,
    ChunkMessage,
    DeviceStateMessage,
    OrchestratorStateMessage,
    PenaltyMessage,
    Reassembler,
    RequestMessage,
    ResponseMessage,
    RowsMessage,
    VectorMessage,
    decode,
    encode,
)
from edgeci_mqtt.wire.topics import ORCHESTRATOR_TRAFFIC, WATCHER_STATE, check_segment

__all__ = ["DEFAULT_STRATEGY", "IN_FLIGHT", "PER_CLIENT", "Orchestrator"]

log = logging.getLogger("edgeci.orchestrator")

IN_FLIGHT = 4
"""Requests an orchestrator serves at once by default."""
PER_CLIENT = 16
"""Requests one client may have waiting at one orchestrator by default."""
DEFAULT_STRATEGY = Strategy("flow")
"""The strategy of requests that name none, unless the orchestrator is given another."""
REASSEMBLY_BYTES, REASSEMBLY_BYTES_PER_TOPIC = 256 << 20, 64 << 20
"""Chunked results held at once: in all, and in one payload (a whole 224x224x64 float32
map, the largest a device sends, is 12.8 MB)."""


def _request_id(payload: bytes) -> str:
    """The request id a malformed request names, if it names a usable one ("?" if not): read
    from the raw map without decoding anything else (it is already known to be malformed)."""
    try:
        data = msgpack.unpackb(payload[:MAX_FRAME_BYTES], raw=False, strict_map_key=True)
        request = data.get("request") if isinstance(data, dict) else None
        return check_segment(request, "request") if isinstance(request, str) else "?"
    except Exception:  # anything at all: it is hostile input
        return "?"


class Orchestrator:
    """The auctioneer on ``bus``: call :meth:`run` until ``stop`` is set.

    Nothing connects or measures here: the caller gives the bus and the profile of
    this host (``edgeci_mqtt.profiling.measure_profile``), which prices its merges,
    gateway blocks and the tail in the plans.
    """

    def __init__(
        self,
        orchestrator_id: str,
        bus: Bus,
        models: ModelStore,
        profile: DeviceProfile,
        strategy: Strategy = DEFAULT_STRATEGY,
        broker_link: Link | None = None,
        auction_s: float = 0.5,
        min_allowance_s: float = MIN_TASK_DEADLINE_S,
        in_flight: int = IN_FLIGHT,
        per_client: int = PER_CLIENT,
    ) -> None:
        """``min_allowance_s``: the least time a device gets for a task before it is given up
        (it gets ``5 x`` its own predicted time when that is longer). ``in_flight``: requests
        served at once (each by a worker thread). ``per_client``: requests one client may
        have waiting (the next is refused as busy)."""
        self.id, self.bus, self.models, self.strategy = orchestrator_id, bus, models, strategy
        self._traffic = TrafficPublisher(bus, orchestrator_id, ORCHESTRATOR_TRAFFIC.build(orchestrator=orchestrator_id))
        publish = self._traffic.publish  # what we send, reported while a watcher is online (if a data message)
        broker_link = broker_link or Link(1000.0, 0.1)
        self.table = DeviceTable()
        self.plans = PlanCache(models, self.table, profile, broker_link)
        self.weights = WeightsSender(models, self.table, publish)
        self.mail = Mailboxes()
        self.requests: FairQueue[Admitted] = FairQueue(per_client)
        self.state_topic = ORCHESTRATOR_STATE.build(orchestrator=orchestrator_id)
        self.in_flight = max(1, in_flight)
        self._reassembler = Reassembler(max_bytes=REASSEMBLY_BYTES, max_message_bytes=REASSEMBLY_BYTES_PER_TOPIC)
        self.penalties = Penalties(announce=self._announce_penalty)
        self.runs = RunServices(
            orchestrator_id, publish, self.mail, self.penalties, profile, broker_link, auction_s, min_allowance_s
        )

    def run(self, stop: threading.Event) -> None:
        bus = self.bus
        ours = RESULTS.filter_with(orchestrator=self.id)
        filters = (DEVICE_STATE.filter, ours, AUCTION_BIDS.filter, ORCHESTRATOR_PENALTIES.filter, SHARED_REQUESTS)
        for topic in (*filters, WATCHER_STATE.filter):  # watchers: whether to report what we send
            bus.subscribe(topic)
        bus.will(self.state_topic, encode(OrchestratorStateMessage(self.id, False)))
        bus.start()
        workers = [
            threading.Thread(target=self._serve, name=f"{self.id}-worker-{i}", daemon=True)
            for i in range(self.in_flight)
        ]
        for worker in workers:
            worker.start()
        held = ", ".join(self.models.held)
        log.info("orchestrator %s ready, serving %s (default strategy %s)", self.id, held, self.strategy)
        for event in events_until(bus, stop):
            if isinstance(event, Inbound):
                self._dispatch(event)
            elif isinstance(event, Connected):  # (re)born: clients know we serve
                self._announce(True)
        self.requests.close()
        for worker in workers:
            worker.join(timeout=5)
        self._announce(False)
        self._traffic.stop()
        bus.stop()

    def _announce_penalty(self, device: str, hold_s: float, strikes: int, why: str) -> None:
        """Tell the other orchestrators that ``device`` failed one of our requests."""
        penalty = PenaltyMessage(self.id, device, hold_s, strikes, why[:4000])
        topic = ORCHESTRATOR_PENALTIES.build(orchestrator=self.id)
        self._traffic.publish(topic, penalty, f"tell the others {device} failed")

    def _announce(self, online: bool) -> None:
        state, word = OrchestratorStateMessage(self.id, online), "online" if online else "offline"
        self._traffic.publish(self.state_topic, state, f"announce itself {word}", retain=True, wait=5)

    def _answer(self, topic: str, correlation: bytes | None, message: ResponseMessage | AcceptedMessage) -> None:
        """Publish the answer; one that cannot go is logged: no dispatcher or worker is lost to the bus."""
        self._traffic.publish(topic, message, f"answer request {message.request}", correlation=correlation)

    def _error(self, request: str, error: str) -> ResponseMessage:
        """The answer to ``request`` when it has no logits: why (as much as the wire carries)."""
        return ResponseMessage(request, error=error[:4000], orchestrator=self.id)

    # ------------------------------------------------------------ dispatcher
    def _dispatch(self, event: Inbound) -> None:
        if self._traffic.heard(event):  # a watcher's state: whether to report what we send devices
            return
        try:
            sent, bid = RESULTS.parse(event.topic), AUCTION_BIDS.parse(event.topic)  # once per message
            if self.mail.unexpected(sent, bid):
                self.mail.dropped += 1  # before decoding or reassembling a byte of it
                return
            asker = INFER_REQUESTS.parse(event.topic) if sent is None and bid is None else None
            if asker is not None:
                self._admit(asker["client"], self._request(event, asker["client"]))
                return
            if (message := self._reassembler.feed(event.topic, event.payload)) is None:
                return
            if isinstance(message, DeviceStateMessage) and event.topic == DEVICE_STATE.build(device=message.device):
                self.table.update(message)
            elif isinstance(message, PenaltyMessage) and event.topic == ORCHESTRATOR_PENALTIES.build(
                orchestrator=message.orchestrator
            ):
                if message.orchestrator != self.id:  # ours, back from the broker
                    self.penalties.heard(message.device, message.hold_s, message.strikes, time.perf_counter())
            elif isinstance(message, BidMessage) and bid == {"round": message.round, "device": message.device}:
                self.mail.deliver_bid(message)
            elif isinstance(message, Inbox):
                sender = message.sender if isinstance(message, RowsMessage | VectorMessage) else message.device
                if sent != {"orchestrator": self.id, "device": sender, "request": message.request}:
                    raise WireError(f"a {message.kind} from {sender} for {message.request} does not belong here")
                self.mail.deliver(message, time.perf_counter())  # arrival, for traces
            else:
                raise WireError(f"a {message.kind} message does not belong on {event.topic}")
        except Exception as exc:  # one message must never stop the dispatcher
            log.warning("orchestrator %s: rejected message on %s: %s", self.id, event.topic[:200], exc)

    def _request(self, event: Inbound, client: str) -> Admitted:
        """A request of ``client`` (the broker proved who asked), decoded (it fits one frame: a
        chunk there is hostile), to be answered on the client's own responses topic and nowhere
        else. A malformed one is answered with why when its client can read the answer, so that
        no client waits out its timeout for an answer that cannot come."""
        own = CLIENT_RESPONSES.build(client=client)
        try:
            message = decode(event.payload) if len(event.payload) <= MAX_FRAME_BYTES else None
            if message is None or isinstance(message, ChunkMessage):
                raise WireError("a request must fit in one frame")
            if not isinstance(message, RequestMessage):
                raise WireError(f"a {message.kind} message is not a request")
        except WireError as exc:
            if event.response_topic == own and event.correlation:
                error = self._error(_request_id(event.payload), f"malformed request: {exc}")
                self._answer(own, event.correlation, error)
            raise
        if event.response_topic != own:
            raise WireError(f"request {message.request} must be answered on {own}, not elsewhere")
        return Admitted(message, own, event.correlation, time.perf_counter())

    # ------------------------------------------------------------ requests
    def _admit(self, client: str, request: Admitted) -> None:
        """Queue it and tell the client who serves it, or answer "busy" at once."""
        ahead, asked = self.requests.put(client, request), request.message.request
        if ahead is None:
            busy = f"busy: {self.requests.per_client} requests of {client} are already waiting at {self.id}"
            self._answer(request.response_topic, request.correlation, self._error(asked, busy))
        else:
            self._answer(request.response_topic, request.correlation, AcceptedMessage(asked, self.id, ahead))

    def _serve(self) -> None:
        while (request := self.requests.get()) is not None:
            message = request.message
            if request.deadline.passed(time.perf_counter()):  # nobody waits for it any more: do not start it
                log.warning("request %s waited past its %.1f s deadline: dropped", message.request, message.deadline_s)
                continue
            try:
                response = self._infer(request)
            except EdgeCIError as exc:
                log.warning("request %s failed: %s", message.request, exc)
                response = self._error(message.request, str(exc))
            except Exception as exc:  # never lose the worker: answer and carry on
                log.exception("request %s failed unexpectedly", message.request)
                response = self._error(message.request, f"internal error: {exc!r}")
            self._answer(request.response_topic, request.correlation, response)

    def _infer(self, request: Admitted) -> ResponseMessage:
        """Plan ``request`` on the devices not held out (and the devices on probation it takes
        as its trials), decide how to serve it, and run it."""
        message = request.message
        held = self.models.get(message.model)
        check_image(message.image, "the request's image")  # clients may be anyone's code
        image = torch.from_numpy(message.image)
        if max(image.shape[-2:], default=0) > MAX_INPUT_SIDE:
            raise EdgeCIError(f"the image is {tuple(image.shape)}; sides up to {MAX_INPUT_SIDE} can travel to devices")
        shapes = held.chain.check_input(image)
        strategy = Strategy.parse(message.strategy) if message.strategy else self.strategy
        size = (shapes[0].height, shapes[0].width)
        trials = self.penalties.take_trials(time.perf_counter())  # devices back on probation: ours to try

        def live() -> list[DeviceView]:
            """The devices this request may use now: online, holding the model, not held out."""
            out = self.penalties.excluded(time.perf_counter(), trials)
            return [v for v in self.table.views(message.model, held.digest) if v.name not in out]

        run: Run | None = None
        try:
            if not (devices := live()):
                held_out = self.penalties.penalised() & set(self.table.online())
                why = f" ({', '.join(sorted(held_out))} held out after failing)" if held_out else ""
                raise EdgeCIError(f"no online device holds {message.model} ({held.digest}){why}")
            started = time.perf_counter()
            with self.plans.serving(message.model, *size, strategy, devices) as (plan, serving):
                planned = time.perf_counter()
                run = Run(
                    RunSetup(
                        services=self.runs,
                        request=f"{message.request[:100]}~{uuid.uuid4().hex[:8]}",  # ours: client ids may collide
                        held=held,
                        plan=plan,
                        shapes=shapes,
                        devices=live,
                        prepare=partial(self.weights.send, message.model),
                        origin=request.received,
                        replan=self.plans.whole(message.model, *size, serving),
                        trace=message.trace,
                        backlog_s=serving.backlog_s,
                        deadline=request.deadline,
                    )
                )
                run.spent("plan", started, f"{strategy} ({serving.mode})", end=planned)
                logits = run.run(message.image)
            return _response(request, run, logits, strategy, serving.mode, self.id)
        finally:  # a trial that failed was counted as it failed
            self.penalties.settle(trials, run.used if run else (), (), time.perf_counter())


def _response(
    request: Admitted, run: Run, logits: torch.Tensor, strategy: Strategy, mode: str, orchestrator: str
) -> ResponseMessage:
    """The answer of a request served by ``run``, with where its time went."""
    message = request.message
    timings = {k: float(v) for k, v in vars(run.timings).items()}
    timings["whole_request"] = float(mode == "whole")
    timings["total_s"] = time.perf_counter() - request.received
    devices = tuple(sorted(run.used))
    where, ms = ", ".join(devices) or "the orchestrator", timings["total_s"] * 1e3
    log.info("request %s (%s, %s) done in %.1f ms on %s", message.request, message.model, strategy, ms, where)
    return ResponseMessage(
        message.request,
        logits=logits.contiguous().numpy(),
        timings=timings,
        orchestrator=orchestrator,
        strategy=str(strategy),
        devices=devices,
        timeline=tuple(run.timeline or ()),
    )
