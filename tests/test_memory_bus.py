"""The in-process broker keeps the MQTT semantics the runtime relies on."""

from __future__ import annotations

import numpy as np
import pytest

from edgeci_mqtt.bus.memory import MemoryBroker, MemoryBus, topic_matches
from edgeci_mqtt.bus.protocol import Connected, Disconnected, Event, Inbound
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.wire import MAX_PAYLOAD_BYTES, PackedArray, Reassembler, RowsMessage, encode

pytestmark = pytest.mark.pure


def drain(bus: MemoryBus) -> list[Event]:
    got = []
    while not bus.events.empty():
        got.append(bus.events.get_nowait())
    return got


def inbound(bus: MemoryBus) -> list[tuple[str, bytes]]:
    return [(e.topic, e.payload) for e in drain(bus) if isinstance(e, Inbound)]


def test_topic_filters() -> None:
    assert topic_matches("a/+/c", "a/b/c") and not topic_matches("a/+/c", "a/b/d")
    assert topic_matches("a/#", "a/b/c") and topic_matches("a/#", "a")  # '#' includes the parent level
    assert topic_matches("#", "a/b") and not topic_matches("#", "$SYS/x") and not topic_matches("+/x", "$SYS/x")
    assert not topic_matches("a/b", "a/b/c") and not topic_matches("a/b/c", "a/b")


def test_retained_messages_are_delivered_on_subscribe_and_cleared_by_an_empty_payload() -> None:
    broker = MemoryBroker()
    sender = broker.bus("sender")
    sender.start()
    sender.publish("s/1", b"one", retain=True)
    sender.publish("s/2", b"two", retain=True)
    sender.publish("s/2", b"", retain=True)
    late = broker.bus("late")
    late.subscribe("s/+")
    late.start()
    events = drain(late)
    assert isinstance(events[0], Connected)
    assert [(e.topic, e.payload, e.retain) for e in events[1:] if isinstance(e, Inbound)] == [("s/1", b"one", True)]


def test_the_will_fires_on_a_crash_not_on_a_clean_stop() -> None:
    broker = MemoryBroker()
    watcher = broker.bus("watcher")
    watcher.subscribe("state/#")
    watcher.start()
    for name, end in (("clean", MemoryBus.stop), ("crashed", MemoryBus.crash)):
        bus = broker.bus(name)
        bus.will(f"state/{name}", b"offline")
        bus.start()
        end(bus)
        assert isinstance(drain(bus)[-1], Disconnected)
    assert inbound(watcher) == [("state/crashed", b"offline")]


def test_shared_subscriptions_take_turns_and_plain_ones_get_everything() -> None:
    broker = MemoryBroker()
    workers = [broker.bus(f"w{i}") for i in range(2)]
    for worker in workers:
        worker.subscribe("$share/g/jobs")
        worker.start()
    spy = broker.bus("spy")
    spy.subscribe("jobs")
    spy.subscribe("#")  # overlapping filters: still one copy
    spy.start()
    client = broker.bus("client")
    client.start()
    for i in range(4):
        client.publish("jobs", bytes([i]), response_topic="replies/client", correlation=b"c")
    got = [inbound(w) for w in workers]
    assert sorted(p for g in got for _, p in g) == [bytes([i]) for i in range(4)] and all(len(g) == 2 for g in got)
    assert len(inbound(spy)) == 4


def test_order_per_publisher_response_properties_and_chunks() -> None:
    broker = MemoryBroker()
    receiver = broker.bus("receiver")
    receiver.subscribe("t")
    receiver.start()
    sender = broker.bus("sender")
    sender.start()
    big = np.arange(MAX_PAYLOAD_BYTES * 3 // 8, dtype=np.float32)  # 1.5 frames of bytes: two frames
    rows = big.reshape(1, 1, -1, 8)
    sender.publish("t", encode(RowsMessage("q", "d", 1, TileRegion.of(0, rows.shape[2], 0, 8), PackedArray(rows))))
    for i in range(50):
        sender.publish("t", bytes([i]), response_topic="r", correlation=b"id")
    events = [e for e in drain(receiver) if isinstance(e, Inbound)]
    frames, rest = events[:2], events[2:]
    assembler = Reassembler()
    assert assembler.feed("t", frames[0].payload) is None
    whole = assembler.feed("t", frames[1].payload)
    assert isinstance(whole, RowsMessage) and np.array_equal(whole.rows.array, rows)
    assert [e.payload for e in rest] == [bytes([i]) for i in range(50)]
    assert all(e.response_topic == "r" and e.correlation == b"id" for e in rest)


def test_an_oversize_or_wildcard_publish_ends_the_senders_session() -> None:
    broker = MemoryBroker(max_packet_bytes=1000)
    receiver = broker.bus("receiver")
    receiver.subscribe("#")
    receiver.start()
    for topic, payload in (("t", b"x" * 1001), ("t/+", b"x"), ("t/#", b"x")):
        sender = broker.bus("sender")
        sender.will("state/sender", b"gone")
        sender.start()
        sender.publish_frame(topic, payload)
        assert not sender.connected and isinstance(drain(sender)[-1], Disconnected)
    assert [t for t, _ in inbound(receiver)] == ["state/sender"] * 3


def test_a_taken_over_client_id_ends_the_older_session() -> None:
    broker = MemoryBroker()
    first, second = broker.bus("same"), broker.bus("same")
    first.start()
    second.start()
    assert not first.connected and second.connected
    assert isinstance(drain(first)[-1], Disconnected)


def test_the_acl_hook_drops_denied_publishes_and_subscriptions() -> None:
    def acl(client: str, access: str, topic: str) -> bool:
        return not (client == "intruder" and access == "write") and not (
            client == "nosy" and topic.startswith("secret")
        )

    broker = MemoryBroker(acl=acl)
    nosy, honest = broker.bus("nosy"), broker.bus("honest")
    for bus in (nosy, honest):
        bus.subscribe("#")
        bus.start()
    intruder = broker.bus("intruder")
    intruder.start()
    intruder.publish("public", b"forged")
    honest.publish("secret/x", b"s")
    honest.publish("public", b"p")
    assert inbound(nosy) == [("public", b"p")]
    assert inbound(honest) == [("secret/x", b"s"), ("public", b"p")]
