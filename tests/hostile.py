"""Hostile payloads for every topic the roles subscribe to, and what the roles must say.

The same list is thrown at the in-process roles (test_roles.py) and at real processes
through Mosquitto (test_runtime.py); each payload is wrong in one way.
"""

from __future__ import annotations

from dataclasses import replace

import msgpack
import numpy as np

from edgeci_mqtt.bus.protocol import Bus
from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.models.held import weights_digest
from edgeci_mqtt.wire import (
    DEVICE_ROWS,
    MAX_PAYLOAD_BYTES,
    RESULTS,
    AuctionLot,
    BidMessage,
    CallMessage,
    ChunkMessage,
    DeviceStateMessage,
    FailureMessage,
    LotPrices,
    PackedArray,
    ProgramMessage,
    ProgramStep,
    RequestMessage,
    RowsMessage,
    StepInput,
    StepSend,
    WeightsMessage,
    encode,
    encode_array,
)
from tests.planning import flat_profile

DEVICE_COMPLAINTS = (
    "unknown dtype 'complex64'",
    "needs 192 bytes",
    "not msgpack",
    "unknown schema version 9",
    "not a non-empty range",
    "frame limit",
    "is not ours",
    "cannot be a program.request",
    "outside the",
    "is not in [1, 8192]",
)
"""What a device logs (among other lines) for these payloads on its tasks and call topics."""
ORCHESTRATOR_COMPLAINTS = (
    "not increasing positive",
    "expected an int",
    "is not a link",
    "longer than allowed",
    "more than allowed",
    "must be answered on",
    "is not 1-128 printable characters",
    "frame limit",
)
"""What an orchestrator logs for these payloads on the state, bids, results and requests topics."""
WILDCARD_RESPONSE_TOPIC = "edgeci/v1/clients/+/responses"
"""The response topic hostile requests carry: answering it would publish to a wildcard."""


def hostile_payloads() -> list[bytes]:
    tile = np.zeros((1, 3, 4, 4), dtype=np.float32)
    good = encode_array(tile)
    digest = weights_digest("smallcnn", None, 0)
    region, out = TileRegion.of(0, 4, 0, 4), TileRegion.of(0, 2, 0, 2)
    step = ProgramStep(FusedBlock(0, 1), out, (StepInput(region, "o1"),), (StepSend(out, "o1"),))
    program = ProgramMessage(
        request="q", orchestrator="o1", model="smallcnn", digest=digest, input_hw=(64, 64), steps=(step,),
        expires_s=10.0, input_region=region, input=tile,
    )  # fmt: skip
    fields = msgpack.unpackb(encode(program))

    def mangled(**changes: object) -> bytes:
        return msgpack.packb({**fields, **changes}, use_bin_type=True)

    def mangled_step(**changes: object) -> bytes:
        return mangled(steps=[{**fields["steps"][0], **changes}])

    profile = flat_profile().to_dict()
    state = {"v": 1, "type": "state", "device": "dev-9", "online": True, "link": Link(1.0, 1.0).to_dict()}
    deep: list[object] = []
    for _ in range(1000):  # msgpack nests up to 1024 levels; a naive repr or decoder recurses through them
        deep = [deep]
    return [
        b"\x00\xffgarbage",
        msgpack.packb({"v": deep, "type": "program"}),
        mangled(request=deep),
        encode(DeviceStateMessage("dev-9", True))[:-3],
        encode(DeviceStateMessage("dev-1", False)).replace(b"\xa1v\x01", b"\xa1v\x09"),  # wrong schema version
        mangled(input=dict(good, data=good["data"][:-4])),
        mangled(input=dict(good, dtype="complex64")),
        mangled_step(block=[5, 2]),
        mangled(input_hw=[2**36, 8]),
        mangled_step(out_region=[0, 99, 0, 2]),
        mangled(request="a/+/#"),
        encode(replace(program, digest="not-our-weights")),
        encode(replace(program, input=np.full((1, 3, 4, 4), np.nan, np.float32))),
        encode(ChunkMessage("c", 0, 100, b"x")),
        encode(WeightsMessage("smallcnn", digest, "features.0", {"weight": tile}, "0" * 64)),
        msgpack.packb({b"binary": 1}, use_bin_type=True),
        encode(
            CallMessage("huge", "o1", "smallcnn", (8192, 8192), (AuctionLot(FusedBlock(0, 1), (Span(0, 1),)),), 0.1)
        ),
        encode(CallMessage("far", "o1", "smallcnn", (64, 64), (AuctionLot(FusedBlock(0, 1), (Span(0, 999),)),), 0.1)),
        encode(CallMessage("none", "o1", "smallcnn", (64, 64), (), 0.1)),
        encode(BidMessage("r", "dev-1", 0.0, (LotPrices((0.1,) * 5000, ()),))),
        encode(FailureMessage("q", "dev-1", 0, "x" * 5000)),
        encode(RequestMessage("q", "smallcnn", np.zeros((1, 3, 64, 64), np.float32))),  # answer to a wildcard
        msgpack.packb({**state, "profile": {**profile, "conv_depths": [0, 8]}}, use_bin_type=True),
        msgpack.packb({**state, "profile": {**profile, "threads": float("inf")}}, use_bin_type=True),
        msgpack.packb({**state, "profile": profile, "link": {"bandwidth_mbit": 0, "latency_ms": 1}}),
        msgpack.packb({**state, "profile": profile, "models": {"a\nforged log line": "x"}}),
        b"\x01" * (MAX_PAYLOAD_BYTES + 20_000),  # one raw frame over our limit, under the broker's
    ]


def forged_results_flood(bus: Bus, orchestrator: str, device: str, count: int = 150) -> int:
    """``count`` valid 4 MB rows messages and ``count`` first frames of 64 MB chunked payloads,
    each for a request the orchestrator never ran, from ``device``'s credential; frames sent."""
    tile = np.zeros((1, 1024, 1023, 1), np.float32)
    whole = encode(RowsMessage("forged", device, 1, TileRegion.of(0, 1023, 0, 1), PackedArray(tile)))
    data = b"\x00" * (MAX_PAYLOAD_BYTES - 1024)
    for index in range(count):
        topic = RESULTS.build(orchestrator=orchestrator, device=device, request=f"forged-{index}")
        bus.publish(topic, whole, wait=30)
        # the first frame of a 16-frame payload: 64 MB that would be held for a minute
        bus.publish(topic, encode(ChunkMessage(f"huge-{index}", 0, 16, data)), wait=30)
    return 2 * count


def zeros_bomb(request: str, sender: str, elements: int) -> bytes:
    """A rows message whose ``zeros`` map declares ``elements`` float32 zeros: a bitmap of
    ``elements / 8`` bytes that would inflate to 32 times its size."""
    side = 1 << ((elements.bit_length() - 1) // 2)
    packed = {
        "dtype": "float32",
        "shape": [1, 1, side, elements // side],
        "codec": "zeros",
        "data": bytes(elements // 8),
    }
    region = [0, side, 0, elements // side]
    record = {"v": 1, "type": "rows", "request": request, "sender": sender, "boundary": 1, "region": region}
    return msgpack.packb({**record, "rows": packed}, use_bin_type=True)


def rows_flood(bus: Bus, device: str, sender: str, count: int = 150) -> int:
    """What a device credential can throw at another device's rows topic, for requests it
    never ran: ``count`` first frames of 64 MB chunked payloads, ``count`` whole 4 MB rows
    messages, and one chunked ``zeros`` bomb declaring 2^27 elements (512 MB); frames sent."""
    data = b"\x00" * (MAX_PAYLOAD_BYTES - 1024)
    rows = np.zeros((1, 1024, 1023, 1), np.float32)
    sent = 0
    for index in range(count):
        topic = DEVICE_ROWS.build(device=device, sender=sender, request=f"forged-{index}")
        bus.publish(
            topic,
            encode(RowsMessage(f"forged-{index}", sender, 1, TileRegion.of(0, 1023, 0, 1), PackedArray(rows))),
            wait=30,
        )
        bus.publish(topic, encode(ChunkMessage(f"huge-{index}", 0, 16, data)), wait=30)
        sent += 2
    bomb = DEVICE_ROWS.build(device=device, sender=sender, request="bomb")
    bus.publish(bomb, zeros_bomb("bomb", sender, 1 << 27), wait=30)  # chunked by the bus: 16 MB of bitmap
    return sent + 1
