"""The wire: round trips, and a clear WireError for everything else (no broker)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.wire import (
    MAX_PAYLOAD_BYTES,
    AuctionCall,
    BidMessage,
    Chunk,
    DeviceState,
    InferRequest,
    InferResponse,
    Reassembler,
    ResultMessage,
    TaskMessage,
    Topics,
    decode,
    decode_tensor,
    encode,
    encode_tensor,
    frames,
)

TENSOR = encode_tensor(torch.arange(6, dtype=torch.float32).reshape(1, 2, 3))
MESSAGES = [
    DeviceState("dev-1", True, {"threads": 1}, {"bandwidth_mbit": 100.0, "latency_ms": 1.0}, {"vgg16": "ab"}, "0.1"),
    DeviceState("dev-1", False),
    AuctionCall("r1", "o1", "vgg16", [224, 224], [0, 10], [[0, 1], [1, 2]], 500.0),
    BidMessage("r1", "dev-1", 0.0, [0.1, 0.2], [0.05, 0.05]),
    TaskMessage("q", "t", "o1", "vgg16", "ab", [224, 224], [0, 4], [0, 3, 0, 2], [0, 1, 0, 1], TENSOR),
    ResultMessage("q", "t", "dev-1", [0, 1, 0, 1], TENSOR, {"compute_s": 0.1}),
    ResultMessage("q", "t", "dev-1", [0, 1, 0, 1], error="boom"),
    InferRequest("q", "vgg16", TENSOR, "edgeci"),
    InferRequest("q", "vgg16", TENSOR, "edgeci", trace=True),
    InferResponse("q", TENSOR, timings={"total_s": 1.0}, orchestrator="o1", strategy="aofl", devices=["dev-1"]),
    InferResponse("q", TENSOR, timeline=[["orchestrator", "plan", 0.0, 0.001, None, None, "edgeci"]]),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
def test_every_message_round_trips(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]


def test_tensors_round_trip_bit_exactly() -> None:
    for array in (
        np.random.default_rng(0).standard_normal((1, 3, 5, 7)).astype(np.float32),
        np.arange(10, dtype=np.int64),
        np.zeros((0, 4), dtype=np.float32),
    ):
        back = decode_tensor(msgpack.unpackb(msgpack.packb(encode_tensor(array))))
        assert np.array_equal(back.numpy(), array) and back.numpy().dtype == array.dtype


def raw(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\x00garbage", "not msgpack"),
        (raw(hello=1) + b"x", "not msgpack"),
        (msgpack.packb([1, 2]), "not a msgpack map"),
        (msgpack.packb({b"v": 1, "type": "state"}, use_bin_type=True), "string keys"),
        (raw(v=2, type="state", device="d", online=True), "unknown schema version 2"),
        (raw(type="state", device="d", online=True), "unknown schema version None"),
        (raw(v=1, type="teleport"), "unknown message type 'teleport'"),
        (raw(v=1, type="state", device="d", online=True, extra=1), r"unknown field\(s\) extra"),
        (raw(v=1, type="state", device="d"), r"missing field\(s\) online"),
        (raw(v=1, type="state", device=5, online=True), "state.device: expected str, got int"),
        (raw(v=1, type="bid", round="r", device="d", queue_s=True, alone_s=[], extend_s=[]), "boolean"),
    ],
)
def test_malformed_payloads_raise_one_clear_error(payload: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode(payload)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"dtype": "float16", "shape": [1], "data": b"\x00\x00"}, "unknown dtype 'float16'"),
        ({"dtype": "float32", "shape": [2, 2], "data": b"\x00" * 12}, "needs 16 bytes, got 12"),
        ({"dtype": "float32", "shape": [-1], "data": b""}, "non-negative ints"),
        ({"dtype": "float32", "shape": [1, 1, 1, 1, 1], "data": b"\x00" * 4}, "at most 4"),
        ({"dtype": "float32", "shape": [1], "data": "text"}, "got str"),
        ({"dtype": "float32", "shape": [1 << 30], "data": b""}, "more than allowed"),
        ({"dtype": "float32", "shape": [1]}, "exactly dtype, shape and data"),
        ({"dtype": ["float32"], "shape": [1], "data": b"\x00" * 4}, "unknown dtype"),
        ({"dtype": "float32", "shape": [2**32, 2**32, 1, 1], "data": b""}, "more than allowed"),
    ],
)
def test_malformed_tensors(tensor: dict, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_tensor(tensor)


def test_big_payloads_travel_in_chunks_and_come_back() -> None:
    big = ResultMessage("q", "t", "d", [0, 1, 0, 1], encode_tensor(torch.randn(1, 64, 150, 150)))
    parts = frames(encode(big))
    assert len(parts) == 2 and all(len(p) <= MAX_PAYLOAD_BYTES for p in parts)
    again = Reassembler()
    assert again.feed("t", parts[1]) is None  # any order
    assert again.feed("t", parts[0]) == big
    assert frames(b"small") == [b"small"]


def test_reassembly_is_bounded() -> None:
    small = Reassembler(max_bytes=10 * MAX_PAYLOAD_BYTES)
    with pytest.raises(WireError, match="out of range"):
        small.feed("t", encode(Chunk("c", 0, 10**9, b"x")))
    with pytest.raises(WireError, match="reassembly budget"):
        for i in range(11):
            small.feed("t", encode(Chunk("c", i, 11, b"x" * (MAX_PAYLOAD_BYTES - 8192))))
    mixed = Reassembler()
    assert mixed.feed("t", encode(Chunk("c", 0, 2, b"ab"))) is None
    with pytest.raises(WireError, match="counts disagree"):
        mixed.feed("t", encode(Chunk("c", 1, 3, b"cd")))
    with pytest.raises(WireError, match="frame limit"):
        mixed.feed("t", b"\x00" * (MAX_PAYLOAD_BYTES + 10_000))
    nested = Reassembler()
    inner = encode(Chunk("x", 0, 1, b"y"))
    with pytest.raises(WireError, match="chunk cannot contain a chunk"):
        nested.feed("t", encode(Chunk("c", 0, 1, inner)))


def test_topics() -> None:
    assert Topics.device_state("dev-1") == "edgeci/v1/devices/dev-1/state"
    assert Topics.auction_bids("r1", "dev-1") == "edgeci/v1/auctions/r1/bids/dev-1"
    assert Topics.shared_requests == "$share/edgeci-orchestrators/edgeci/v1/infer/requests"
    for bad in ("", "a/b", "+", "#", "$SYS"):
        with pytest.raises(WireError, match="cannot be a topic segment"):
            Topics.device_tasks(bad)
