"""Every request whose answer its client can read is answered: a malformed one with why,
at once, instead of leaving the client to wait out its timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest

from edgeci_mqtt.bus.memory import MemoryBus
from edgeci_mqtt.bus.protocol import Inbound
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.wire import (
    CLIENT_RESPONSES,
    INFER_REQUESTS,
    SCHEMA_VERSION,
    ReleaseMessage,
    ResponseMessage,
    decode,
    encode,
)
from tests.inprocess import MemoryCluster, memory_cluster

pytestmark = pytest.mark.pure


@pytest.fixture(scope="module")
def cluster() -> Iterator[MemoryCluster]:
    with memory_cluster(ModelStore({"smallcnn": None}, seed=0), devices=1) as running:
        yield running


def raw_request(image: dict[str, object], request: object = "r-1") -> bytes:
    return msgpack.packb(
        {"v": SCHEMA_VERSION, "type": "infer", "request": request, "model": "smallcnn", "image": image},
        use_bin_type=True,
    )


def answer(bus: MemoryBus, correlation: bytes, timeout: float = 5.0) -> ResponseMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = bus.events.get(timeout=max(0.0, deadline - time.monotonic()))
        if isinstance(event, Inbound) and event.correlation == correlation:
            message = decode(event.payload)
            assert isinstance(message, ResponseMessage)
            return message
    raise AssertionError("no answer")


@pytest.mark.parametrize(
    ("image", "request_id", "why"),
    [
        ({"dtype": "complex64", "shape": [1, 3, 8, 8], "data": bytes(8 * 3 * 64)}, "r-1", "unknown dtype"),
        ({"dtype": "float16", "shape": [1, 3, 8, 8], "data": bytes(2 * 3 * 64)}, "r-2", "unknown dtype"),
        ({"dtype": "float32", "shape": [1, 3, 8, 8], "data": b""}, "r-3", "needs 768 bytes"),
        ({"dtype": "float32", "shape": [1, 3, 8, 8]}, "r-4", "exactly dtype, shape and data"),
        ({"dtype": "float32", "shape": [1, 3, 8, 8]}, ["not", "an", "id"], "expected str"),
    ],
)
def test_a_malformed_request_is_answered_with_why(
    cluster: MemoryCluster, image: dict[str, object], request_id: object, why: str
) -> None:
    client = cluster.broker.bus("mallory")
    own = CLIENT_RESPONSES.build(client="mallory")
    client.subscribe(own)
    client.start()
    try:
        correlation = np.random.default_rng().bytes(8)
        client.publish_frame(
            INFER_REQUESTS.build(client="mallory"),
            raw_request(image, request_id),
            response_topic=own,
            correlation=correlation,
        )
        response = answer(client, correlation)
    finally:
        client.stop()
    assert "malformed request" in response.error and why in response.error
    assert response.request == (request_id if isinstance(request_id, str) else "?")


def test_a_message_that_is_not_a_request_is_answered_too(cluster: MemoryCluster) -> None:
    client = cluster.broker.bus("trudy")
    own = CLIENT_RESPONSES.build(client="trudy")
    client.subscribe(own)
    client.start()
    try:
        client.publish_frame(
            INFER_REQUESTS.build(client="trudy"),
            encode(ReleaseMessage("r-9", "o1", "not a request")),
            response_topic=own,
            correlation=b"not-a-request",
        )
        response = answer(client, b"not-a-request")
    finally:
        client.stop()
    assert "a release message is not a request" in response.error
