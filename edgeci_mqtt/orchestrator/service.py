"""The orchestrator (auctioneer): device table, planning, inference, answers.

A dispatcher loop reads the bus's events: retained device states keep the live
device table (every membership change bumps its generation, so the next request is
re-planned), bids and results go to the running inference's mailboxes, requests to a
queue served by ``IN_FLIGHT`` worker threads. Requests arrive through the MQTT v5 shared
subscription, so several orchestrators share the load; each answers on the request's
response topic with its correlation data.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import msgpack
import torch

from edgeci_mqtt.bus.protocol import Bus, Connected, Inbound, events_until
from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import FeatureShape
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.imaging import check_image
from edgeci_mqtt.models.held import FETCH, HeldModel, ModelStore
from edgeci_mqtt.models.stage_weights import stage_state, weights_message
from edgeci_mqtt.orchestrator.admission import FairQueue
from edgeci_mqtt.orchestrator.load import Commitments
from edgeci_mqtt.orchestrator.mailboxes import Mailboxes
from edgeci_mqtt.orchestrator.penalties import Penalties
from edgeci_mqtt.orchestrator.run import MIN_TASK_DEADLINE_S, Run, RunSetup
from edgeci_mqtt.planner.costs import RowModel
from edgeci_mqtt.planner.environment import DeviceView, Environment
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.planner.serving import Serving, WholeRequest, choose_serving, price_shares, whole_request_plan
from edgeci_mqtt.planner.strategies import PlanningContext, context_for, make_plan
from edgeci_mqtt.planner.strategy import Strategy
from edgeci_mqtt.planner.tail import TailPlan
from edgeci_mqtt.timeline import ORCHESTRATOR
from edgeci_mqtt.watch.publisher import TrafficPublisher
from edgeci_mqtt.wire import (
    AUCTION_BIDS,
    CLIENT_RESPONSES,
    DEVICE_STATE,
    DEVICE_TASKS,
    INFER_REQUESTS,
    MAX_FRAME_BYTES,
    MAX_INPUT_SIDE,
    ORCHESTRATOR_PENALTIES,
    ORCHESTRATOR_STATE,
    RESULTS,
    SHARED_REQUESTS,
    BidMessage,
    Chunk,
    DeviceState,
    Failure,
    InferAccepted,
    InferRequest,
    InferResponse,
    Message,
    OrchestratorState,
    PenaltyMessage,
    Progress,
    Reassembler,
    RowsMessage,
    StepDone,
    StepReport,
    VectorMessage,
    decode,
    encode,
)
from edgeci_mqtt.wire.topics import ORCHESTRATOR_TRAFFIC, WATCHER_STATE, check_segment

__all__ = ["DeviceTable", "Orchestrator"]

log = logging.getLogger("edgeci.orchestrator")

IN_FLIGHT = 4
"""Requests an orchestrator serves at once by default."""
PER_CLIENT = 16
"""Requests one client may have waiting at one orchestrator by default."""
DEFAULT_STRATEGY = Strategy("flow")
"""The strategy of requests that name none, unless the orchestrator is given another."""
PLANS_KEPT = 16
"""Plans cached at once (by model, input size, strategy and the devices planned for)."""
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


class DeviceTable:
    """Live devices from their retained state messages."""

    def __init__(self) -> None:
        self._states: dict[str, DeviceState] = {}
        self._profiles: dict[str, DeviceProfile] = {}
        self._links: dict[str, Link] = {}
        self._lock = threading.Lock()
        self.generation = 0
        self.births = 0

    def update(self, state: DeviceState) -> None:
        profile, link = state.profile, state.link  # typed and checked by the wire
        if state.online and (profile is None or link is None):
            raise WireError(f"device {state.device} is online without a profile and a link")
        with self._lock:
            before = self._states.get(state.device)
            if state.online and profile is not None and link is not None:
                self._states[state.device], self._profiles[state.device] = state, profile
                self._links[state.device] = link
            else:
                self._states.pop(state.device, None)
                self._profiles.pop(state.device, None)
                self._links.pop(state.device, None)
            if state.online and before is None:
                self.births += 1
            if (before is None) != (not state.online) or (before is not None and before.models != state.models):
                self.generation += 1  # not for a corrected speed: bids carry it, and planning anew costs ~1 s
                log.info(
                    "device %s is %s (generation %d)",
                    state.device,
                    "online" if state.online else "offline",
                    self.generation,
                )

    def online(self) -> list[str]:
        with self._lock:
            return sorted(self._states)

    def views(self, model: str, digest: str) -> list[DeviceView]:
        """Online devices that hold ``model`` with these weights, or fetch them (a fetching
        device gets the weights of stages only, so no room for the tail's), with the tail
        weights each has made."""
        with self._lock:
            return [
                DeviceView(
                    name,
                    self._profiles[name],
                    self._links[name],
                    memory_bytes=0 if s.models.get(model) == FETCH else s.memory_bytes,
                    tail=s.tails.get(model),
                )
                for name, s in sorted(self._states.items())
                if s.models.get(model) in (digest, FETCH)
            ]

    def fetches(self, device: str, model: str) -> bool:
        with self._lock:
            state = self._states.get(device)
            return state is not None and state.models.get(model) == FETCH

    def cached(self, device: str, digest: str) -> set[str]:
        """Stages of these weights the device announced it has on disk."""
        with self._lock:
            state = self._states.get(device)
            return set(state.weights.get(digest, [])) if state is not None else set()


@dataclass
class _Planned:
    """A plan cached for the device table's ``generation`` (keyed by the devices it was made
    for: fewer while some are held out after failing), and what it hands each device."""

    generation: int
    plan: Plan
    shares: dict[str, float] | None = None


@dataclass
class _Request:
    message: InferRequest
    response_topic: str
    correlation: bytes | None
    received: float

    def give_up_at(self) -> float | None:
        """When the client stops waiting (a ``perf_counter`` time; None: it said nothing)."""
        deadline = self.message.deadline_s
        return self.received + deadline if deadline > 0 else None

    def expired(self, now: float) -> bool:
        """Past the time the client said it would wait (from when it reached us)."""
        give_up_at = self.give_up_at()
        return give_up_at is not None and now > give_up_at


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
        self.results_filter = RESULTS.filter_with(orchestrator=orchestrator_id)
        self.id, self.bus, self.models, self.profile, self.strategy = orchestrator_id, bus, models, profile, strategy
        self._traffic = TrafficPublisher(bus, orchestrator_id, ORCHESTRATOR_TRAFFIC.build(orchestrator=orchestrator_id))
        self.broker_link = broker_link or Link(1000.0, 0.1)
        self.auction_s, self.min_allowance_s = auction_s, min_allowance_s
        self.table = DeviceTable()
        self.mail = Mailboxes()
        self.requests: FairQueue[_Request] = FairQueue(per_client)
        self.state_topic = ORCHESTRATOR_STATE.build(orchestrator=orchestrator_id)
        self.in_flight = max(1, in_flight)
        self._lock = threading.Lock()  # plans, row models and weights sent, shared by the workers
        self._reassembler = Reassembler(max_bytes=REASSEMBLY_BYTES, max_message_bytes=REASSEMBLY_BYTES_PER_TOPIC)
        self._plans: OrderedDict[tuple[str, int, int, Strategy, frozenset[str]], _Planned] = OrderedDict()
        self._rows: dict[tuple[str, int, int], RowModel] = {}
        self._weights_sent: dict[tuple[str, str], tuple[int, set[str]]] = {}  # (device, digest) -> (births, stages)
        self.commitments = Commitments()
        self.penalties = Penalties(announce=self._announce_penalty)
        self._tails: dict[str, TailPlan] = {}  # flow's tail placement in use, by model digest

    def run(self, stop: threading.Event) -> None:
        bus = self.bus
        filters = (DEVICE_STATE.filter, self.results_filter, AUCTION_BIDS.filter, ORCHESTRATOR_PENALTIES.filter)
        for topic in (*filters, SHARED_REQUESTS):
            bus.subscribe(topic)
        bus.subscribe(WATCHER_STATE.filter)  # whether to report what we send devices
        bus.will(self.state_topic, encode(OrchestratorState(self.id, False)))
        bus.start()
        workers = [
            threading.Thread(target=self._serve, name=f"{self.id}-worker-{i}", daemon=True)
            for i in range(self.in_flight)
        ]
        for worker in workers:
            worker.start()
        log.info(
            "orchestrator %s ready, serving %s (default strategy %s)",
            self.id,
            ", ".join(self.models.held),
            self.strategy,
        )
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
        try:
            self.bus.publish(ORCHESTRATOR_PENALTIES.build(orchestrator=self.id), encode(penalty))
        except EdgeCIError as exc:
            log.warning("orchestrator %s: cannot tell the others that %s failed: %s", self.id, device, exc)

    def _announce(self, online: bool) -> None:
        try:
            self.bus.publish(self.state_topic, encode(OrchestratorState(self.id, online)), retain=True, wait=5)
        except EdgeCIError as exc:
            log.warning(
                "orchestrator %s: cannot announce itself %s: %s", self.id, "online" if online else "offline", exc
            )

    # ------------------------------------------------------------ dispatcher
    def _dispatch(self, event: Inbound) -> None:
        if self._traffic.heard(event):  # a watcher's state: whether to report what we send devices
            return
        try:
            sent, bid = RESULTS.parse(event.topic), AUCTION_BIDS.parse(event.topic)  # once per message
            if self._unexpected(sent, bid):
                self.mail.dropped += 1  # before decoding or reassembling a byte of it
                return
            asker = INFER_REQUESTS.parse(event.topic) if sent is None and bid is None else None
            if asker is not None:
                message: Message | None = self._request(event, asker["client"])
            else:
                message = self._reassembler.feed(event.topic, event.payload)
            if message is None:
                return
            if isinstance(message, DeviceState) and DEVICE_STATE.parse(event.topic) == {"device": message.device}:
                self.table.update(message)
            elif isinstance(message, PenaltyMessage) and ORCHESTRATOR_PENALTIES.parse(event.topic) == {
                "orchestrator": message.orchestrator
            }:
                if message.orchestrator != self.id:  # ours, back from the broker
                    self.penalties.heard(message.device, message.hold_s, message.strikes, time.perf_counter())
            elif isinstance(message, BidMessage) and bid == {"round": message.round, "device": message.device}:
                self.mail.silence.heard(message.device)
                box = self.mail.bids.get(message.round)
                if box is not None:
                    box.put(message)
            elif isinstance(message, Failure | RowsMessage | VectorMessage | StepDone | StepReport | Progress):
                sender = message.sender if isinstance(message, RowsMessage | VectorMessage) else message.device
                if sent != {"orchestrator": self.id, "device": sender, "request": message.request}:
                    raise WireError(f"a {message.kind} from {sender} for {message.request} does not belong here")
                self.mail.deliver(message, time.perf_counter())  # arrival, for traces
            elif isinstance(message, InferRequest) and asker is not None:
                own = CLIENT_RESPONSES.build(client=asker["client"])  # the broker proved who asked
                if event.response_topic != own:
                    raise WireError(f"request {message.request} must be answered on {own}, not elsewhere")
                self._admit(asker["client"], _Request(message, own, event.correlation, time.perf_counter()))
            else:
                raise WireError(f"a {message.kind} message does not belong on {event.topic}")
        except Exception as exc:  # one message must never stop the dispatcher
            log.warning("orchestrator %s: rejected message on %s: %s", self.id, event.topic[:200], exc)

    def _request(self, event: Inbound, client: str) -> Message:
        """A request, decoded; a malformed one is answered with why, when its client can read
        the answer (on its own responses topic: no answer goes anywhere else), so that no
        client waits out its timeout for an answer that cannot come."""
        try:
            if len(event.payload) > MAX_FRAME_BYTES:
                raise WireError("a request must fit in one frame")
            message = decode(event.payload)
            if isinstance(message, Chunk):  # a request fits one frame: a chunk there is hostile
                raise WireError("a request must fit in one frame")
            if not isinstance(message, InferRequest):
                raise WireError(f"a {message.kind} message is not a request")
            return message
        except WireError as exc:
            own = CLIENT_RESPONSES.build(client=client)
            if event.response_topic == own and event.correlation:
                error = f"malformed request: {exc}"[:4000]
                refusal = InferResponse(_request_id(event.payload), error=error, orchestrator=self.id)
                self._answer(own, event.correlation, refusal)
            raise

    def _unexpected(self, result: dict[str, str] | None, bid: dict[str, str] | None) -> bool:
        """A result for a request not in flight here, or a bid for a round not open (from a
        device that is not silent), by the ids its topic carries: it is dropped unread (a
        flood of them costs no memory)."""
        if result is not None:
            return result["request"] not in self.mail.results
        # a late bid of a silent device still says it is back
        return bid is not None and bid["round"] not in self.mail.bids and bid["device"] not in self.mail.silence

    # ------------------------------------------------------------ requests
    def _admit(self, client: str, request: _Request) -> None:
        """Queue it and tell the client who serves it, or answer "busy" at once."""
        ahead = self.requests.put(client, request)
        if ahead is None:
            busy = f"busy: {self.requests.per_client} requests of {client} are already waiting at {self.id}"
            self._reply(request, InferResponse(request.message.request, error=busy, orchestrator=self.id))
        else:
            self._reply(request, InferAccepted(request.message.request, self.id, ahead))

    def _reply(self, request: _Request, message: InferResponse | InferAccepted) -> None:
        self._answer(request.response_topic, request.correlation, message)

    def _answer(self, topic: str, correlation: bytes | None, message: InferResponse | InferAccepted) -> None:
        try:
            self.bus.publish(topic, encode(message), correlation=correlation)
        except Exception as exc:  # never lose the thread
            log.error("cannot answer request %s: %s", message.request, exc)

    def _serve(self) -> None:
        while (request := self.requests.get()) is not None:
            message = request.message
            if request.expired(time.perf_counter()):  # nobody waits for it any more: do not start it
                log.warning("request %s waited past its %.1f s deadline: dropped", message.request, message.deadline_s)
                continue
            try:
                response = self._infer(request)
            except EdgeCIError as exc:
                log.warning("request %s failed: %s", message.request, exc)
                response = InferResponse(message.request, error=str(exc)[:4000], orchestrator=self.id)
            except Exception as exc:  # never lose the worker: answer and carry on
                log.exception("request %s failed unexpectedly", message.request)
                response = InferResponse(message.request, error=f"internal error: {exc!r}"[:4000], orchestrator=self.id)
            self._reply(request, response)

    def _plan(self, model: str, height: int, width: int, strategy: Strategy, devices: list[DeviceView]) -> Plan:
        """The cached plan for these devices, re-planned whenever the device table changed.
        A few device sets are kept (:data:`PLANS_KEPT`): while a device is on probation the
        request holding its trial plans with it and the others without it, and each plan
        costs a small orchestrator up to a second."""
        held = self.models.get(model)
        generation, names = self.table.generation, frozenset(v.name for v in devices)
        key = (model, height, width, strategy, names)
        with self._lock:
            cached = self._plans.get(key)
            if cached is not None and cached.generation == generation:
                self._plans.move_to_end(key)
                return cached.plan
            env = Environment(tuple(devices), self.profile, self.broker_link)
            ctx = context_for(held.spec(height, width), env, rows=self._rows.get((model, height, width)))
            self._rows[(model, height, width)] = ctx.rows
            plan = make_plan(strategy, ctx)
            self._plans[key] = _Planned(generation, plan)
            self._plans.move_to_end(key)
            while len(self._plans) > PLANS_KEPT:
                self._plans.popitem(last=False)
            return plan

    def _shares(self, plan: Plan, devices: list[DeviceView], height: int, width: int) -> dict[str, float]:
        """What a plan takes from each device (:func:`~edgeci_mqtt.planner.serving.price_shares`),
        kept with the cached plan (pricing every task took a 0.25-CPU orchestrator ~30 ms of
        every request)."""
        with self._lock:
            planned = next((p for p in self._plans.values() if p.plan is plan), None)
            if planned is not None and planned.shares is not None:
                return planned.shares
        shares = price_shares(plan, self.models.get(plan.model).row_model(height, width), devices)
        if planned is not None:
            planned.shares = shares
        return shares

    def _context(self, model: str, height: int, width: int, devices: list[DeviceView]) -> PlanningContext:
        """A planning context for these devices, with the row model the plans priced."""
        with self._lock:
            rows = self._rows.get((model, height, width))
        env = Environment(tuple(devices), self.profile, self.broker_link)
        return context_for(self.models.get(model).spec(height, width), env, rows=rows)

    def _send_weights(self, device: str, model: str, block: FusedBlock) -> None:
        """Before a fetching device's task: the weights of the block's stages it lacks,
        on its tasks topic, so they arrive first."""
        if not self.table.fetches(device, model):
            return
        held = self.models.get(model)
        key = (device, held.digest)
        with self._lock:  # one worker sends a stage; the others' tasks queue behind it on the topic
            births, sent = self._weights_sent.get(key, (-1, set()))
            if births != self.table.births:  # a (re)birth: trust only what it has on disk
                sent = self.table.cached(device, held.digest)
            for stage in held.weighted_stages(block):
                if stage not in sent:
                    state = stage_state(held.chain.model, stage)
                    self._traffic.publish(
                        DEVICE_TASKS.build(device=device), encode(weights_message(model, held.digest, stage, state))
                    )
                    sent.add(stage)
            self._weights_sent[key] = (self.table.births, sent)

    def _infer(self, request: _Request) -> InferResponse:
        message = request.message
        held = self.models.get(message.model)
        check_image(message.image, "the request's image")  # clients may be anyone's code
        image = torch.from_numpy(message.image)
        if max(image.shape[-2:], default=0) > MAX_INPUT_SIDE:
            raise EdgeCIError(f"the image is {tuple(image.shape)}; sides up to {MAX_INPUT_SIDE} can travel to devices")
        shapes = held.chain.check_input(image)
        trials = self.penalties.take_trials(time.perf_counter())  # devices back on probation: ours to try
        used: set[str] = set()
        try:
            return self._serve_with(request, held, image, shapes, trials, used)
        finally:  # a trial that failed was counted as it failed
            self.penalties.settle(trials, used, (), time.perf_counter())

    def _serve_with(
        self,
        request: _Request,
        held: HeldModel,
        image: torch.Tensor,
        shapes: list[FeatureShape],
        trials: frozenset[str],
        used: set[str],
    ) -> InferResponse:
        """Plan and run ``request`` on the devices not held out (and this request's
        ``trials``); ``used`` gets the devices its run used, whatever happens."""
        message = request.message
        strategy = Strategy.parse(message.strategy) if message.strategy else self.strategy

        def live() -> list[DeviceView]:
            """The devices this request may use now: online, holding the model, not held out."""
            out = self.penalties.excluded(time.perf_counter(), trials)
            return [v for v in self.table.views(message.model, held.digest) if v.name not in out]

        devices = live()
        if not devices:
            held_out = self.penalties.penalised() & set(self.table.online())
            why = f" ({', '.join(sorted(held_out))} held out after failing)" if held_out else ""
            raise EdgeCIError(f"no online device holds {message.model} ({held.digest}){why}")
        started = time.perf_counter()
        height, width = shapes[0].height, shapes[0].width
        plan = self._plan(message.model, height, width, strategy, devices)
        ctx = self._context(message.model, height, width, devices)
        shares = self._shares(plan, devices, height, width)

        def decide(outstanding: dict[str, float]) -> tuple[Serving, Mapping[str, float]]:
            serving = choose_serving(plan, ctx, shares, outstanding)
            return serving, serving.work

        with self.commitments.claiming(decide) as serving:  # counted as handed out until done
            planned = time.perf_counter()
            replan = None
            if serving.whole is not None:
                replan = partial(self._replan_whole, message.model, height, width, serving.whole)
            run = self._start(request, held, plan, shapes, replan, serving.backlog_s, live)
            run.mark(ORCHESTRATOR, "plan", started, planned, f"{strategy} ({serving.mode})")
            try:
                logits = run.run(message.image)
            finally:
                used |= run.used
        run.timings.plan_s = planned - started
        timings = run.timings.as_dict()
        timings["whole_request"] = float(serving.mode == "whole")
        timings["total_s"] = time.perf_counter() - request.received
        log.info(
            "request %s (%s, %s) done in %.1f ms on %s",
            message.request,
            message.model,
            strategy,
            timings["total_s"] * 1e3,
            ", ".join(sorted(run.used)) or "the orchestrator",
        )
        return InferResponse(
            message.request,
            logits=logits.contiguous().numpy(),
            timings=timings,
            orchestrator=self.id,
            strategy=str(strategy),
            devices=tuple(sorted(run.used)),
            timeline=tuple(run.timeline or ()),
        )

    def _start(
        self,
        request: _Request,
        held: HeldModel,
        plan: Plan,
        shapes: list[FeatureShape],
        replan: Callable[[list[DeviceView]], Plan] | None,
        backlog_s: float,
        devices: Callable[[], list[DeviceView]],
    ) -> Run:
        """The run that serves ``request`` as decided."""
        message = request.message
        setup = RunSetup(
            orchestrator=self.id,
            request=f"{message.request[:100]}~{uuid.uuid4().hex[:8]}",  # ours: client ids may collide
            held=held,
            plan=plan,
            shapes=shapes,
            devices=devices,
            publish=self._traffic.publish,  # and reported while a watcher is online
            prepare=lambda device, block: self._send_weights(device, message.model, block),
            mail=self.mail,
            auction_s=self.auction_s,
            origin=request.received,
            profile=self.profile,
            broker_link=self.broker_link,
            replan=replan,
            trace=message.trace,
            min_allowance_s=self.min_allowance_s,
            backlog_s=backlog_s,
            give_up_at=request.give_up_at(),
            tails=self._tails,
            penalties=self.penalties,
        )
        return Run(setup)

    def _replan_whole(
        self, model: str, height: int, width: int, whole: WholeRequest, devices: list[DeviceView]
    ) -> Plan:
        """A request served whole, for the devices left (after a failure, fewer)."""
        ctx = self._context(model, height, width, devices)
        return whole_request_plan(ctx, whole, self.commitments.snapshot())
