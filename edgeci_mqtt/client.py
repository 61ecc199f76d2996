"""The client API: ``EdgeCIClient(broker).infer(image)`` -> scores.

Requests go on this client's own request topic (the orchestrators read it through their
shared subscription) with an MQTT v5 response topic of its own and a correlation id; the
answer is matched by that id. The broker lets a client write only its own request topic
and read only its own responses, and binds its client id to its user name.

A client never waits out its timeout when the answer cannot come: it fails at once when
no orchestrator is online, when the orchestrator says it is busy, or when the session to
the broker drops; when the orchestrator serving a request dies (its will), the request is
sent again to another one, or fails clearly if none is left.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edgeci_mqtt.bus.address import BrokerAddress, TlsFiles
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.bus.protocol import Bus, Disconnected, Inbound, events_until
from edgeci_mqtt.errors import InferenceError, TransportError, WireError
from edgeci_mqtt.imaging import check_image, load_input
from edgeci_mqtt.timeline import Interval
from edgeci_mqtt.wire import (
    CLIENT_RESPONSES,
    INFER_REQUESTS,
    MAX_PAYLOAD_BYTES,
    MAX_SECONDS,
    ORCHESTRATOR_STATE,
    AcceptedMessage,
    Message,
    OrchestratorStateMessage,
    Reassembler,
    RequestMessage,
    ResponseMessage,
    decode,
    encode,
)

__all__ = ["EdgeCIClient", "InferenceResult"]


log = logging.getLogger("edgeci.client")

FIND_ORCHESTRATOR_S = 3.0
"""How long a request waits for any orchestrator's birth before failing (their retained
states arrive right after connecting)."""
RESENDS = 1
"""Times a request is sent again after the orchestrator serving it died."""


@dataclass(frozen=True)
class _Lost:
    """The orchestrator ``orchestrator`` went offline (its will or a clean stop)."""

    orchestrator: str


@dataclass(frozen=True)
class InferenceResult:
    logits: Tensor
    latency_s: float
    orchestrator: str
    strategy: str
    devices: list[str]
    timings: dict[str, float]
    timeline: tuple[Interval, ...] = ()  # what each resource did (seconds from the request), if traced


class EdgeCIClient:
    """A session with the cluster's broker; use as a context manager.

    ``broker`` is a URL (``mqtt://user:password@host:port``), a :class:`BrokerAddress`
    (the user name is the client id), or any :class:`~edgeci_mqtt.bus.protocol.Bus` (whose
    client id then names the request and response topics). One client is one session:
    concurrent ``infer`` calls from several threads share it.
    """

    def __init__(self, broker: Bus | BrokerAddress | str, tls: TlsFiles | None = None) -> None:
        if isinstance(broker, str | BrokerAddress):
            broker = MqttBus(BrokerAddress.parse(broker) if isinstance(broker, str) else broker, tls=tls)
        self.bus: Bus = broker
        self.client_id = broker.client_id
        self.requests = INFER_REQUESTS.build(client=self.client_id)
        self.responses = CLIENT_RESPONSES.build(client=self.client_id)
        self.bus.subscribe(self.responses)
        self.bus.subscribe(ORCHESTRATOR_STATE.filter)
        self.orchestrators: set[str] = set()
        """Online orchestrators, from their retained states."""
        self._reassembler = Reassembler()
        self._waiting: dict[bytes, queue.Queue[Message | InferenceError | _Lost]] = {}
        self._lock = threading.Condition()  # notified when an orchestrator comes online
        self._stop = threading.Event()
        self._router = threading.Thread(target=self._route, name=f"{self.client_id}-responses", daemon=True)

    def __enter__(self) -> EdgeCIClient:
        self.bus.start()
        self._router.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._router.join(timeout=2)
        self.bus.stop()

    # ------------------------------------------------------------ the session's one reader
    def _route(self) -> None:
        """Each answer goes to the call waiting for its correlation id; an orchestrator's
        death to every call; a lost session fails every call in flight at once (an answer
        published while the session was down is gone, so waiting could only time out)."""
        try:
            for event in events_until(self.bus, self._stop):
                try:
                    if isinstance(event, Disconnected):
                        self._tell_all(InferenceError(f"lost the broker while waiting for an answer: {event.reason}"))
                    elif isinstance(event, Inbound) and (named := ORCHESTRATOR_STATE.parse(event.topic)) is not None:
                        self._orchestrator_state(event, named["orchestrator"])
                    elif isinstance(event, Inbound) and event.correlation is not None:
                        self._answer(event)
                except Exception:  # one message must never stop the only reader
                    log.exception("%s: cannot handle a message on %s", self.client_id, getattr(event, "topic", "?"))
        except TransportError as exc:  # the session is over for good
            self._tell_all(InferenceError(str(exc)))

    def _orchestrator_state(self, event: Inbound, orchestrator: str) -> None:
        """An orchestrator's birth or death, if it speaks for the topic it came on."""
        try:
            state = decode(event.payload)
        except WireError as exc:
            log.warning("%s: malformed orchestrator state on %s: %s", self.client_id, event.topic, exc)
            return
        if not isinstance(state, OrchestratorStateMessage) or state.orchestrator != orchestrator:
            return
        with self._lock:
            if state.online:
                self.orchestrators.add(state.orchestrator)
                self._lock.notify_all()
                return
            self.orchestrators.discard(state.orchestrator)
        self._tell_all(_Lost(state.orchestrator))

    def _answer(self, event: Inbound) -> None:
        with self._lock:
            waiter = self._waiting.get(event.correlation or b"")
        if waiter is None:
            return  # an answer nobody waits for (any more)
        try:
            message = self._reassembler.feed(event.topic, event.payload)
        except WireError as exc:
            waiter.put(InferenceError(f"malformed response: {exc}"))
            return
        if message is not None:
            waiter.put(message)

    def _tell_all(self, news: InferenceError | _Lost) -> None:
        with self._lock:
            for waiter in self._waiting.values():
                waiter.put(news)

    # ------------------------------------------------------------ asking
    def infer(
        self,
        image: Tensor | Path | str,
        model: str = "vgg16",
        strategy: str = "",
        timeout: float = 60.0,
        size: int = 224,
        trace: bool = False,
    ) -> InferenceResult:
        """Scores for one image (a file, or a normalised (1, 3, H, W) tensor).

        With ``trace`` the answer carries the orchestrator's measured timeline: its own
        planning, auctions, message preparation, merges and tail, and each device's
        download, compute and upload of every task. The orchestrators drop the request
        unstarted once ``timeout`` has passed.
        """
        x = load_input(Path(image), size) if isinstance(image, Path | str) else image
        image_array = (x[None] if x.dim() == 3 else x).detach().cpu().contiguous().numpy()
        check_image(image_array)  # here, before anything travels: no silent cast, no NaN
        request_id = uuid.uuid4().hex

        def request(wait_s: float) -> bytes:
            """The request, telling orchestrators to drop it after ``wait_s`` (0: never; past
            what the wire carries, the client's timeout is as good as none)."""
            deadline_s = wait_s if 0 < wait_s <= MAX_SECONDS else 0.0
            return encode(
                RequestMessage(request_id, model, image_array, strategy=strategy, trace=trace, deadline_s=deadline_s)
            )

        payload = request(timeout)
        if len(payload) > MAX_PAYLOAD_BYTES:  # chunks of a shared subscription would scatter across orchestrators
            raise InferenceError(f"the image is {len(payload)} bytes encoded; requests must fit in {MAX_PAYLOAD_BYTES}")
        started = time.perf_counter()
        with self._lock:
            if not self._lock.wait_for(lambda: self.orchestrators, min(timeout, FIND_ORCHESTRATOR_S)):
                raise InferenceError("no orchestrator is online (none has announced itself to the broker)")
        response = self._await(payload, request, request_id.encode(), started + timeout)
        if not isinstance(response, ResponseMessage):
            raise InferenceError(f"unexpected {response.kind} message as a response")
        if response.error:
            raise InferenceError(response.error)
        if response.logits is None or response.logits.dtype != np.float32:
            raise InferenceError("the response carries no float32 scores")
        return InferenceResult(
            torch.from_numpy(response.logits),
            time.perf_counter() - started,
            response.orchestrator,
            response.strategy,
            list(response.devices),
            dict(response.timings),
            response.timeline if trace else (),
        )

    def _await(self, payload: bytes, request: Callable[[float], bytes], correlation: bytes, deadline: float) -> Message:
        """Send the request and wait for its answer, sending it again if whoever took it
        (or, before anyone said so, any orchestrator) dies: then with only the time left, so
        the other orchestrator does not work on past the client's own timeout."""
        answers: queue.Queue[Message | InferenceError | _Lost] = queue.Queue()
        with self._lock:
            self._waiting[correlation] = answers
        try:
            serving, sends, send = "", 0, True
            while True:
                if send:
                    if sends:
                        payload = request(max(deadline - time.perf_counter(), 1e-3))
                    try:
                        self.bus.publish(self.requests, payload, response_topic=self.responses, correlation=correlation)
                    except TransportError as exc:
                        raise InferenceError(str(exc)) from exc
                    sends, send = sends + 1, False
                try:
                    news = answers.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    raise InferenceError("no answer in time (is an orchestrator running?)") from None
                if isinstance(news, InferenceError):
                    raise news
                if isinstance(news, AcceptedMessage):
                    serving = news.orchestrator
                elif not isinstance(news, _Lost):
                    return news
                elif serving in ("", news.orchestrator):  # ours
                    if sends > RESENDS or not self.orchestrators:
                        raise InferenceError(f"orchestrator {news.orchestrator} went offline while serving the request")
                    log.warning("%s: orchestrator %s went offline; asking another", self.client_id, news.orchestrator)
                    serving, send = "", True
        finally:
            with self._lock:
                del self._waiting[correlation]
