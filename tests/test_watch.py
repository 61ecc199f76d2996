"""The traffic view (pure) that ``edgeci watch`` prints."""

from __future__ import annotations

import torch

from edgeci_mqtt.runtime.watch import TrafficView
from edgeci_mqtt.wire import (
    AuctionCall,
    Award,
    BidMessage,
    DeviceState,
    ResultMessage,
    TaskMessage,
    Topics,
    encode,
    encode_tensor,
    frames,
)


def test_every_message_is_decoded_and_tensors_are_summarised() -> None:
    view = TrafficView()
    tile = encode_tensor(torch.zeros(1, 3, 4, 5))
    state = DeviceState("dev-1", True, link={"bandwidth_mbit": 100.0, "latency_ms": 2.0}, models={"vgg16": "ab"})
    lines = [
        view.feed(Topics.device_state("dev-1"), encode(state), 0.0),
        view.feed(
            Topics.auction_call("r1"),
            encode(AuctionCall("r1", "o1", "vgg16", [224, 224], [0, 5], [[0, 1], [1, 2]], 500.0)),
            0.1,
        ),
        view.feed(
            Topics.auction_bids("r1", "dev-1"), encode(BidMessage("r1", "dev-1", 0.0, [0.01, 0.02], [0.01, 0.01])), 0.2
        ),
        view.feed(Topics.auction_award("r1"), encode(Award("r1", [["dev-1", 0, 2]])), 0.3),
        view.feed(
            Topics.device_tasks("dev-1"),
            encode(
                TaskMessage("q" * 8, "t1", "o1", "vgg16", "ab", [224, 224], [0, 5], [0, 4, 0, 5], [0, 2, 0, 5], tile)
            ),
            1.0,
        ),
    ]
    assert "dev-1 ONLINE" in lines[0] and "100 Mbit/s" in lines[0]
    assert "CALL by o1" in lines[1] and "2 items" in lines[1]
    assert "BID from dev-1" in lines[2] and "AWARD: dev-1: items 0-2" in lines[3]
    assert "float32[1, 3, 4, 5] 240 B" in lines[4]
    assert "busy: task t1" in view.table()
    result = ResultMessage("q", "t1", "dev-1", [0, 2, 0, 5], tile, {"compute_s": 0.005})
    line = view.feed(Topics.results("o1"), encode(result), 1.25)
    assert line is not None and "compute 5.0 ms after 250.0 ms" in line and "idle" in view.table()
    assert "OFFLINE" in (view.feed(Topics.device_state("dev-1"), encode(DeviceState("dev-1", False)), 2.0) or "")
    assert view.table().startswith("0 device(s) online")


def test_invalid_chunked_and_foreign_traffic() -> None:
    view = TrafficView()
    assert "INVALID" in (view.feed(Topics.device_tasks("dev-1"), b"\x00garbage", 0.0) or "")
    assert "(not edgeci)" in (view.feed("home/kitchen/temp", b"21.5", 0.0) or "")
    big = encode(ResultMessage("q", "t", "d", [0, 1, 0, 1], encode_tensor(torch.zeros(1, 64, 150, 150))))
    parts = frames(big)
    assert view.feed(Topics.results("o1"), parts[0], 0.0) is None
    assert "result t from d" in (view.feed(Topics.results("o1"), parts[1], 0.0) or "")
