"""The traffic view (pure) that ``edgeci watch`` prints."""

from __future__ import annotations

import numpy as np
import pytest

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.watch.view import TrafficView
from edgeci_mqtt.wire import (
    AUCTION_AWARD,
    AUCTION_BIDS,
    AUCTION_CALL,
    DEVICE_ROWS,
    DEVICE_STATE,
    DEVICE_TASKS,
    RESULTS,
    AuctionLot,
    AwardMessage,
    AwardRun,
    BidMessage,
    CallMessage,
    DeviceStateMessage,
    FailureMessage,
    LotPrices,
    PackedArray,
    ProgramMessage,
    ProgramStep,
    ReleaseMessage,
    RowsMessage,
    StepInput,
    VectorMessage,
    encode,
    frames,
)
from tests.planning import flat_profile

pytestmark = pytest.mark.pure


def joined(view: TrafficView, topic: str, payload: bytes, now: float) -> str | None:
    """One message's lines joined (None for none)."""
    return "\n".join(view.feed(topic, payload, now)) or None


def test_every_message_is_decoded_and_tensors_are_summarised() -> None:
    view = TrafficView()
    tile = np.zeros((1, 3, 4, 5), dtype=np.float32)
    state = DeviceStateMessage("dev-1", True, profile=flat_profile(), link=Link(100.0, 2.0), models={"vgg16": "ab"})
    call = CallMessage("r1", "o1", "vgg16", (224, 224), (AuctionLot(FusedBlock(0, 5), (Span(0, 1), Span(1, 2))),), 0.5)
    step = ProgramStep(FusedBlock(0, 5), TileRegion.of(0, 2, 0, 5), (StepInput(TileRegion.of(0, 4, 0, 5), "o1"),))
    program = ProgramMessage(
        request="q" * 8, orchestrator="o1", model="vgg16", digest="ab", input_hw=(224, 224), steps=(step,),
        expires_s=30.0, input_region=TileRegion.of(0, 4, 0, 5), input=tile,
    )  # fmt: skip
    lines = [
        joined(view, DEVICE_STATE.build(device="dev-1"), encode(state), 0.0),
        joined(view, AUCTION_CALL.build(round="r1"), encode(call), 0.1),
        joined(
            view,
            AUCTION_BIDS.build(round="r1", device="dev-1"),
            encode(BidMessage("r1", "dev-1", 0.0, (LotPrices((0.01, 0.02), (0.01, 0.01)),))),
            0.2,
        ),
        joined(
            view, AUCTION_AWARD.build(round="r1"), encode(AwardMessage("r1", 0, (AwardRun("dev-1", Span(0, 2)),))), 0.3
        ),
        joined(view, DEVICE_TASKS.build(device="dev-1"), encode(program), 1.0),
    ]
    assert "dev-1 ONLINE" in lines[0] and "100 Mbit/s" in lines[0]
    assert "CALL by o1" in lines[1] and "2 items" in lines[1]
    assert "BID from dev-1" in lines[2] and "AWARD of lot 0: dev-1: items 0-2" in lines[3]
    assert "float32[1, 3, 4, 5] 240 B" in lines[4]
    assert "busy: program qqqqqqqq" in view.table()
    rows = RowsMessage("q" * 8, "dev-1", 5, TileRegion.of(0, 2, 0, 5), PackedArray(tile[:, :, :2]))
    line = joined(view, RESULTS.build(orchestrator="o1", device="dev-1", request="q" * 8), encode(rows), 1.25)
    assert line is not None and "rows qqqqqqqq from dev-1: boundary 5" in line and "idle" in view.table()
    failure = FailureMessage("q" * 8, "dev-1", 0, "boom")
    line = joined(view, RESULTS.build(orchestrator="o1", device="dev-1", request="q" * 8), encode(failure), 1.5)
    assert line is not None and "failure qqqqqqqq from dev-1: item 0: boom" in line
    offline = encode(DeviceStateMessage("dev-1", False))
    assert "OFFLINE" in (joined(view, DEVICE_STATE.build(device="dev-1"), offline, 2.0) or "")
    assert view.table().startswith("0 device(s) online")


def test_invalid_chunked_and_foreign_traffic() -> None:
    view = TrafficView()
    assert "INVALID" in (joined(view, DEVICE_TASKS.build(device="dev-1"), b"\x00garbage", 0.0) or "")
    assert "(not edgeci)" in (joined(view, "home/kitchen/temp", b"21.5", 0.0) or "")
    tile = np.random.default_rng(0).standard_normal((1, 64, 150, 150)).astype(np.float32)
    parts = frames(encode(RowsMessage("r", "d", 1, TileRegion.of(0, 150, 0, 150), PackedArray(tile))))
    assert joined(view, RESULTS.build(orchestrator="o1", device="d", request="r"), parts[0], 0.0) is None
    assert "rows r from d" in (
        joined(view, RESULTS.build(orchestrator="o1", device="d", request="r"), parts[1], 0.0) or ""
    )


def test_flow_messages_are_described() -> None:
    view = TrafficView()
    region = TileRegion.of(0, 2, 0, 5)
    rows = np.zeros((1, 3, 2, 5), dtype=np.float32)
    step = ProgramStep(FusedBlock(0, 5), region, (StepInput(TileRegion.of(0, 4, 0, 5), "o1"),))
    program = ProgramMessage(
        request="q1.1", orchestrator="o1", model="vgg16", digest="ab", input_hw=(224, 224), steps=(step,),
        expires_s=30.0,
    )  # fmt: skip
    lines = [
        joined(view, DEVICE_TASKS.build(device="dev-1"), encode(program), 0.0),
        joined(
            view,
            DEVICE_ROWS.build(device="dev-2", sender="dev-1", request="q1.1"),
            encode(RowsMessage("q1.1", "dev-1", 5, region, PackedArray(rows, "zeros"))),
            0.1,
        ),
        joined(
            view,
            RESULTS.build(orchestrator="o1", device="dev-2", request="q1.1"),
            encode(VectorMessage("q1.1", "dev-2", Span(0, 10), PackedArray(np.zeros((1, 10), np.float32)), True)),
            0.2,
        ),
        joined(view, DEVICE_TASKS.build(device="dev-1"), encode(ReleaseMessage("q1.1", "o1", "done")), 0.3),
    ]
    assert lines[0] is not None and "program q1.1 for dev-1: 1 steps" in lines[0]
    assert lines[1] is not None and "rows q1.1 from dev-1: boundary 5" in lines[1] and "as zeros" in lines[1]
    assert lines[2] is not None and "results/dev-2/q1.1  logits q1.1 from dev-2" in lines[2]
    assert lines[3] is not None and lines[3].endswith("tasks  release q1.1 by o1: done")
