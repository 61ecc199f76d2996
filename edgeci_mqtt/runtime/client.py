"""The client API: ``EdgeCIClient(broker).infer(image)`` -> scores.

Requests go to the orchestrators' shared subscription with an MQTT v5 response topic
of this client's own and a correlation id; the answer is matched by that id.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.imaging import load_input
from edgeci_mqtt.runtime.transport import BrokerAddress, Connection, Inbound
from edgeci_mqtt.timeline import Interval, intervals_from_rows
from edgeci_mqtt.wire import (
    MAX_PAYLOAD_BYTES,
    InferRequest,
    InferResponse,
    Reassembler,
    Topics,
    decode_tensor,
    encode,
    encode_tensor,
)

__all__ = ["EdgeCIClient", "InferenceError", "InferenceResult"]


log = logging.getLogger("edgeci.client")


class InferenceError(EdgeCIError):
    """The cluster could not answer (no orchestrator, no device, a timeout, an error)."""


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
    """A connection to the cluster's broker; use as a context manager."""

    def __init__(self, address: BrokerAddress | str, client_id: str | None = None, ca_file: str | None = None) -> None:
        address = BrokerAddress.parse(address) if isinstance(address, str) else address
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:8]}"
        self.responses = Topics.client_responses(self.client_id)
        self.connection = Connection(address, self.client_id, ca_file=ca_file)
        self.connection.subscribe(self.responses)
        self._reassembler = Reassembler()

    def __enter__(self) -> EdgeCIClient:
        self.connection.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.stop()

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
        message = InferRequest(request_id, model, encode_tensor(x.float().contiguous()), strategy, trace)
        payload = encode(message)
        if len(payload) > MAX_PAYLOAD_BYTES:  # chunks of a shared subscription would scatter across orchestrators
            raise InferenceError(f"the image is {len(payload)} bytes encoded; requests must fit in {MAX_PAYLOAD_BYTES}")
        started = time.perf_counter()
        self.connection.publish(
            Topics.requests, payload, response_topic=self.responses, correlation=request_id.encode()
        )
        deadline = started + timeout
        while (remaining := deadline - time.perf_counter()) > 0:
            try:
                event = self.connection.events.get(timeout=remaining)
            except queue.Empty:
                break
            if not isinstance(event, Inbound) or event.correlation != request_id.encode():
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
            latency = time.perf_counter() - started
            try:
                timeline = intervals_from_rows(response.timeline) if trace else ()
            except WireError as exc:  # diagnostics only: the answer itself is good
                log.warning("request %s: malformed timeline in the response: %s", request_id, exc)
                timeline = ()
            return InferenceResult(
                decode_tensor(response.logits, "response.logits").to(torch.float32),
                latency,
                response.orchestrator,
                response.strategy,
                list(response.devices),
                dict(response.timings),
                timeline,
            )
        raise InferenceError(f"no answer within {timeout:.0f} s (is an orchestrator running?)")
