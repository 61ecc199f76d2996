"""The client API: ``EdgeCIClient(broker).infer(image)`` -> scores.

Requests go to the orchestrators' shared subscription with an MQTT v5 response topic
of this client's own and a correlation id; the answer is matched by that id.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edgeci_mqtt.errors import InferenceError, WireError
from edgeci_mqtt.imaging import check_image, load_input
from edgeci_mqtt.runtime.bus import Bus, Inbound, events_until
from edgeci_mqtt.runtime.transport import BrokerAddress, MqttBus
from edgeci_mqtt.timeline import Interval
from edgeci_mqtt.wire import (
    CLIENT_RESPONSES,
    INFER_REQUESTS,
    MAX_PAYLOAD_BYTES,
    InferRequest,
    InferResponse,
    Reassembler,
    encode,
)

__all__ = ["EdgeCIClient", "InferenceResult"]


log = logging.getLogger("edgeci.client")


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

    ``broker`` is a URL (``mqtt://user:password@host:port``), a :class:`BrokerAddress`,
    or any :class:`~edgeci_mqtt.runtime.bus.Bus` (whose client id then names the
    response topic).
    """

    def __init__(
        self, broker: Bus | BrokerAddress | str, client_id: str | None = None, ca_file: str | None = None
    ) -> None:
        if isinstance(broker, str | BrokerAddress):
            address = BrokerAddress.parse(broker) if isinstance(broker, str) else broker
            broker = MqttBus(address, client_id or f"client-{uuid.uuid4().hex[:8]}", ca_file=ca_file)
        self.bus: Bus = broker
        self.client_id = broker.client_id
        self.responses = CLIENT_RESPONSES.build(client=self.client_id)
        self.bus.subscribe(self.responses)
        self._reassembler = Reassembler()

    def __enter__(self) -> EdgeCIClient:
        self.bus.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bus.stop()

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
        download, compute and upload of every task.
        """
        x = load_input(Path(image), size) if isinstance(image, Path | str) else image
        if x.dim() == 3:
            x = x[None]
        request_id = uuid.uuid4().hex
        image_array = x.detach().cpu().contiguous().numpy()
        check_image(image_array)  # here, before anything travels: no silent cast, no NaN
        payload = encode(InferRequest(request_id, model, image_array, strategy, trace))
        if len(payload) > MAX_PAYLOAD_BYTES:  # chunks of a shared subscription would scatter across orchestrators
            raise InferenceError(f"the image is {len(payload)} bytes encoded; requests must fit in {MAX_PAYLOAD_BYTES}")
        started = time.perf_counter()
        correlation = request_id.encode()
        self.bus.publish(INFER_REQUESTS.filter, payload, response_topic=self.responses, correlation=correlation)
        for event in events_until(self.bus, deadline=started + timeout):
            if not isinstance(event, Inbound) or event.correlation != correlation:
                continue
            try:
                response = self._reassembler.feed(event.topic, event.payload)
            except WireError as exc:
                raise InferenceError(f"malformed response: {exc}") from exc
            if response is None:
                continue
            if not isinstance(response, InferResponse):
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
        raise InferenceError(f"no answer within {timeout:.0f} s (is an orchestrator running?)")
