"""The wire: typed round trips, and one clear WireError for everything else (no broker)."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.link import Link, Medium
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval
from edgeci_mqtt.wire import (
    AUCTION_BIDS,
    AUCTION_CALL,
    DEVICE_STATE,
    DEVICE_TASKS,
    MAX_PAYLOAD_BYTES,
    RESULTS,
    SHARED_REQUESTS,
    AuctionLot,
    AwardMessage,
    AwardRun,
    BidMessage,
    CallMessage,
    ChunkMessage,
    DeviceStateMessage,
    FailureMessage,
    LotPrices,
    Message,
    PackedArray,
    Reassembler,
    RequestMessage,
    ResponseMessage,
    RowsMessage,
    decode,
    decode_array,
    encode,
    encode_array,
    frames,
)
from edgeci_mqtt.wire.access import AclRule, own_rules, shared_rules
from edgeci_mqtt.wire.topics import TOPICS
from tests.planning import flat_profile

pytestmark = pytest.mark.pure

ARRAY = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
REGION = TileRegion.of(0, 1, 0, 1)
MESSAGES: list[Message] = [
    DeviceStateMessage(
        "dev-1",
        True,
        profile=flat_profile(),
        link=Link(100.0, 1.0),
        models={"vgg16": "ab"},
        version="0.1",
        weights={"ab": ("features.0",)},
    ),
    DeviceStateMessage("dev-1", False),
    DeviceStateMessage(
        "dev-1",
        True,
        profile=flat_profile(made=1e9),
        link=Link(10.0, 2.0),
        tails={"vgg16": TailRows((Span(0, 512),), True)},
    ),
    DeviceStateMessage("dev-2", True, profile=flat_profile(), link=Link(54.0, 3.5, Medium("wifi", 40.0))),
    CallMessage("r1", "o1", "vgg16", (224, 224), (AuctionLot(FusedBlock(0, 10), (Span(0, 1), Span(1, 2))),), 0.5),
    BidMessage("r1", "dev-1", 0.0, (LotPrices((0.1, 0.2), (0.05, 0.05)),)),
    AwardMessage("r1", 0, (AwardRun("dev-1", Span(0, 2)),)),
    FailureMessage("q", "dev-1", -1, "refused: boom"),
    FailureMessage("q", "dev-1", 3, "boom"),
    RequestMessage("q", "vgg16", ARRAY, strategy="edgeci"),
    RequestMessage("q", "vgg16", ARRAY, strategy="edgeci", trace=True),
    RequestMessage("q", "vgg16", ARRAY, deadline_s=12.5),
    ResponseMessage(
        "q", logits=ARRAY, timings={"total_s": 1.0}, orchestrator="o1", strategy="aofl", devices=("dev-1",)
    ),
    ResponseMessage("q", logits=ARRAY, timeline=(Interval(ORCHESTRATOR, "plan", 0.0, 0.001, note="edgeci"),)),
    ChunkMessage("c1", 0, 2, b"abc"),
]


def _arrays(message: Message) -> list[Any]:
    """The message's tensors (not part of its equality: arrays do not compare as booleans)."""
    return [getattr(message, name, None) for name in ("input", "output", "image", "logits")]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
def test_every_message_round_trips_as_typed_values(message: Message) -> None:
    back = decode(encode(message))
    assert back == message and type(back) is type(message)
    for got, sent in zip(_arrays(back), _arrays(message), strict=True):
        assert (got is None) == (sent is None)
        if sent is not None:
            assert got.dtype == sent.dtype and got.shape == sent.shape and got.tobytes() == sent.tobytes()


def test_arrays_round_trip_bit_exactly_and_come_back_writable() -> None:
    for array in (
        np.random.default_rng(0).standard_normal((1, 3, 5, 7)).astype(np.float32),
        np.arange(10, dtype=np.int64),
        np.zeros((0, 4), dtype=np.float32),
    ):
        back = decode_array(msgpack.unpackb(msgpack.packb(encode_array(array))))
        assert np.array_equal(back, array) and back.dtype == array.dtype and back.flags.writeable


def raw(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def state(medium: object = None, **profile_changes: object) -> bytes:
    profile = {**flat_profile().to_dict(), **profile_changes}
    link = {"bandwidth_mbit": 100.0, "latency_ms": 1.0} | ({} if medium is None else {"medium": medium})
    return raw(v=1, type="state", device="d", online=True, profile=profile, link=link)


def program(step: dict[str, object] | None = None, **changes: object) -> bytes:
    """A program's fields, one of them (or of its step) changed."""
    steps = [{"block": [0, 4], "out_region": [0, 1, 0, 1], "inputs": [{"region": [0, 3, 0, 2], "source": "o"}]}]
    fields = {
        **dict(v=1, type="program", request="q", orchestrator="o", model="m", digest="d", input_hw=[224, 224]),
        **dict(steps=[{**steps[0], **(step or {})}], expires_s=30.0, input_region=[0, 3, 0, 2]),
        "input": encode_array(ARRAY),
    }
    return raw(**{**fields, **changes})


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
        (raw(v=1, type="state", device="d/+", online=True), "cannot be a state.device"),
        (raw(v=1, type="state", device="a\nb", online=True), "cannot be a state.device"),
        (raw(v=1, type="state", device="d" * 129, online=True), "cannot be a state.device"),
        (raw(v=1, type="infer", request="q", model="m", image=encode_array(ARRAY), deadline_s=-1.0), "not in"),
        (raw(v=1, type="infer", request="q", model="m", image=encode_array(ARRAY), deadline_s=math.inf), "finite"),
        (raw(v=1, type="bid", round="r", device="d", queue_s=True, lots=[]), "boolean|number"),
        (raw(v=1, type="bid", round="r", device="d", queue_s=math.inf, lots=[]), "not finite"),
        (
            raw(v=1, type="bid", round="r", device="d", queue_s=0, lots=[{"alone_s": [-1.0], "extend_s": [0.0]}]),
            "not in",
        ),
        (
            raw(v=1, type="bid", round="r", device="d", queue_s=0, lots=[{"alone_s": [math.nan], "extend_s": [0]}]),
            "finite",
        ),
        (raw(v=1, type="bid", round="r", device="d", queue_s=0, lots=[{"alone_s": [0.1]}] * 300), "more than"),
        (  # every item a float, one of them infinite: the fast check refuses, the slow one names it
            raw(v=1, type="bid", round="r", device="d", queue_s=0, lots=[{"alone_s": [0.5, math.inf], "extend_s": []}]),
            r"alone_s\[1\]: inf is not finite",
        ),
        (
            raw(v=1, type="bid", round="r", device="d", queue_s=0, lots=[{"alone_s": [0.5, 1e300], "extend_s": []}]),
            r"alone_s\[1\]: 1e\+300 is not in",
        ),
        (state(conv_depths=[0, 8]), "not increasing positive"),
        (state(conv_depths=[1, 2**64 - 1]), "not increasing positive"),
        (state(conv_depths=[1, math.inf]), "expected an int"),
        (state(threads=0), "out of range"),
        (state(op_overhead_s=math.inf), "not finite"),
        (state(conv_rates=[[1.0, 1.0], [1.0, 0.0]]), "not positive"),
        (state(rates={"relu": math.inf}), "not finite"),
        (state(pool_rates={"max": [[0, 1e9]]}), "window 0"),
        (state(medium={"name": "wifi"}), "expected a name and bandwidth_mbit"),
        (state(medium={"name": "wi/fi", "bandwidth_mbit": 10.0}), "cannot be a state.link.medium.name"),
        (state(medium={"name": 7, "bandwidth_mbit": 10.0}), "expected a name and bandwidth_mbit"),
        (state(medium={"name": "wifi", "bandwidth_mbit": 0.0}), "0.0 Mbit/s is not a bandwidth"),
        (state(medium={"name": "wifi", "bandwidth_mbit": math.inf}), "finite"),
        (state(medium=[1, 2]), "expected a map"),
        (
            raw(v=1, type="state", device="d", online=False, tails={"m": {"first": [[0, 9], [5, 20]]}}),
            "in order and apart",
        ),
        (raw(v=1, type="state", device="d", online=False, tails={"m": {"first": [[3, 3]]}}), "not a non-empty range"),
        (raw(v=1, type="state", device="d", online=False, tails={"m": {"rest": 1}}), "state.tails.m.rest"),
        (
            raw(
                v=1,
                type="state",
                device="d",
                online=False,
                tails={"m": {"first": [[2 * i, 2 * i + 1] for i in range(257)]}},
            ),
            "257 items is more than allowed",
        ),
        (raw(v=1, type="state", device="d", online=False, tails={f"m{i}": {} for i in range(65)}), "state.tails"),
        (program({"block": [4, 4]}), "not a non-empty range"),
        (program({"block": [0, 2**40]}), "not a non-empty range"),
        (program({"out_region": [0, 1, 0]}), r"expected \[y0, y1, x0, x1\]"),
        (program(input_hw=[224, 0]), "not in"),
        (program(input_hw=[224]), "expected 2 items"),
        (program(input={"dtype": "float16", "shape": [1], "data": b"\x00\x00"}), "unknown dtype"),
        (raw(v=1, type="response", request="q", timeline=[["d", "dance", 0.0, 1.0, None, None, ""]]), "timeline row 0"),
        (raw(v=1, type="award", round="r", lot=0, runs=[["d", 0, 2]]), "expected a map"),
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
def test_malformed_tensors(tensor: dict[str, Any], message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_array(tensor)


def test_big_payloads_travel_in_chunks_and_come_back() -> None:
    tile = np.random.default_rng(1).standard_normal((1, 64, 150, 150)).astype(np.float32)
    big = RowsMessage("q", "d", 1, TileRegion.of(0, 150, 0, 150), PackedArray(tile))
    parts = frames(encode(big))
    assert len(parts) == 2 and all(len(p) <= MAX_PAYLOAD_BYTES for p in parts)
    again = Reassembler()
    assert again.feed("t", parts[1]) is None  # any order
    back = again.feed("t", parts[0])
    assert isinstance(back, RowsMessage) and back == big
    assert np.array_equal(back.rows.array, tile)
    assert frames(b"small") == [b"small"]


def test_reassembly_is_bounded() -> None:
    small = Reassembler(max_bytes=10 * MAX_PAYLOAD_BYTES)
    with pytest.raises(WireError, match="not in"):
        small.feed("t", encode(ChunkMessage("c", 0, 10**9, b"x")))
    with pytest.raises(WireError, match="out of range"):
        small.feed("t", encode(ChunkMessage("c", 0, 100, b"x")))
    with pytest.raises(WireError, match="reassembly budget"):
        for i in range(11):
            small.feed("t", encode(ChunkMessage("c", i, 11, b"x" * (MAX_PAYLOAD_BYTES - 8192))))
    mixed = Reassembler()
    assert mixed.feed("t", encode(ChunkMessage("c", 0, 2, b"ab"))) is None
    with pytest.raises(WireError, match="counts disagree"):
        mixed.feed("t", encode(ChunkMessage("c", 1, 3, b"cd")))
    with pytest.raises(WireError, match="frame limit"):
        mixed.feed("t", b"\x00" * (MAX_PAYLOAD_BYTES + 10_000))
    nested = Reassembler()
    inner = encode(ChunkMessage("x", 0, 1, b"y"))
    with pytest.raises(WireError, match="chunk cannot contain a chunk"):
        nested.feed("t", encode(ChunkMessage("c", 0, 1, inner)))


def test_topics_are_built_parsed_and_filtered_from_one_declaration() -> None:
    assert DEVICE_STATE.build(device="dev-1") == "edgeci/v1/devices/dev-1/state"
    assert AUCTION_BIDS.build(round="r1", device="dev-1") == "edgeci/v1/auctions/r1/bids/dev-1"
    assert AUCTION_BIDS.parse("edgeci/v1/auctions/r1/bids/dev-1") == {"round": "r1", "device": "dev-1"}
    assert AUCTION_BIDS.filter == "edgeci/v1/auctions/+/bids/+"
    assert SHARED_REQUESTS == "$share/edgeci-orchestrators/edgeci/v1/infer/requests/+"
    for topic in ("edgeci/v1/auctions/r1/bids", "edgeci/v1/auctions/r1/bids/+", "edgeci/v2/auctions/r/bids/d"):
        assert AUCTION_BIDS.parse(topic) is None
    assert AUCTION_CALL.parse(AUCTION_BIDS.build(round="r", device="d")) is None
    for pattern in TOPICS:  # every kind parses what it builds, and nothing of another kind
        ids = {name: f"x{i}" for i, name in enumerate(pattern.ids)}
        built = pattern.build(**ids)
        assert [p for p in TOPICS if p.parse(built) is not None] == [pattern] and pattern.parse(built) == ids
    for bad in ("", "a/b", "+", "#", "$SYS", "a b", "x\ny"):
        with pytest.raises(WireError, match="cannot be a device"):
            DEVICE_TASKS.build(device=bad)
    with pytest.raises(WireError, match="needs ids"):
        RESULTS.build(device="d")


def test_the_roles_are_generated_from_the_topic_declarations() -> None:
    """Grants on a user's own id go to its own role, with its name in the topic; the others
    to the shared role with ``+``; nothing outside the declarations is granted."""
    device = own_rules("device", "dev-7")
    assert AclRule("publishClientSend", "edgeci/v1/devices/dev-7/state") in device
    assert AclRule("publishClientSend", "edgeci/v1/auctions/+/bids/dev-7") in device
    assert AclRule("publishClientSend", "edgeci/v1/devices/+/rows/dev-7/+") in device
    assert AclRule("subscribePattern", "edgeci/v1/devices/dev-7/rows/+/+") in device
    assert AclRule("publishClientReceive", "edgeci/v1/devices/dev-7/tasks") in device
    assert all("dev-7" in rule.topic for rule in device)
    assert AclRule("publishClientSend", "edgeci/v1/orchestrators/+/results/dev-7/+") in device
    assert not any("devices/" in rule.topic for rule in shared_rules("device"))
    client = own_rules("client", "alice")
    assert set(client) == {
        AclRule("publishClientSend", "edgeci/v1/infer/requests/alice"),
        AclRule("subscribePattern", "edgeci/v1/clients/alice/responses"),
        AclRule("publishClientReceive", "edgeci/v1/clients/alice/responses"),
    }
    assert shared_rules("client") == (  # whom to ask, and whether the one serving it died
        AclRule("subscribePattern", "edgeci/v1/orchestrators/+/state"),
        AclRule("publishClientReceive", "edgeci/v1/orchestrators/+/state"),
    )
    orchestrator = shared_rules("orchestrator")
    assert AclRule("subscribeLiteral", SHARED_REQUESTS) in orchestrator
    assert not any(r.kind == "subscribePattern" and "infer" in r.topic for r in orchestrator)  # only via $share
    assert own_rules("orchestrator", "o1") == (
        AclRule("publishClientSend", "edgeci/v1/devices/+/rows/o1/+"),  # it forwards the maps it holds
        AclRule("publishClientSend", "edgeci/v1/orchestrators/o1/state"),
        AclRule("subscribePattern", "edgeci/v1/orchestrators/o1/results/+/+"),
        AclRule("publishClientReceive", "edgeci/v1/orchestrators/o1/results/+/+"),
        AclRule("publishClientSend", "edgeci/v1/orchestrators/o1/traffic"),
        AclRule("publishClientSend", "edgeci/v1/orchestrators/o1/penalties"),
    )
    denied = {r.topic for r in shared_rules("watcher") if not r.allow}
    assert {"$share/#", "$CONTROL/#", "edgeci/v1/clients/#", "edgeci/v1/infer/#"} <= denied
    with pytest.raises(WireError):
        own_rules("device", "dev/+")
