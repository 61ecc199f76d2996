"""A device's memory under what a device credential can send it: rows for requests it does
not hold, first frames of chunked messages nobody completes, compressed bombs.

Pure tests of the reassembly rules and the decoders' size checks, then a device agent on
the in-memory broker flooded on its rows topic (the real-process figures are in
``bench.reliability`` and ``tests/test_failover.py``)."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest

from bench.report import resident_mb, sampled_rss
from edgeci_mqtt.bus.address import BrokerAddress
from edgeci_mqtt.bus.mqtt import MESSAGE_OVERHEAD, MqttBus, queued_cost
from edgeci_mqtt.client import EdgeCIClient
from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.device.agent import EARLY, ROWS_INBOX_BYTES, inbox_limits, wire_bytes
from edgeci_mqtt.device.store import HOLDING_PER_SENDER, FlowStore
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.exactness import faithful
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.programs import DeviceProgram, downstream_first
from edgeci_mqtt.wire import (
    DEVICE_ROWS,
    DEVICE_TASKS,
    MAX_PAYLOAD_BYTES,
    Allowance,
    ChunkMessage,
    PackedArray,
    ProgramMessage,
    ProgramStep,
    Reassembler,
    RowsMessage,
    StepInput,
    encode,
    frames,
    framing,
)
from edgeci_mqtt.wire.framing import FRAME_CHARGE, MAX_PARTIALS_PER_POOL
from edgeci_mqtt.wire.tensors import arrays_within
from tests.cluster import local_cluster, wait_for
from tests.exactness import References
from tests.hostile import rows_flood, zeros_bomb
from tests.inprocess import MemoryCluster, memory_cluster

FRAME = MAX_PAYLOAD_BYTES - 8192
"""Data of one full chunk frame."""


def first_frame(ident: str, count: int = 2) -> bytes:
    return encode(ChunkMessage(ident, 0, count, b"\x00" * FRAME))


@pytest.mark.pure
def test_a_frame_over_its_topics_allowance_is_refused_before_it_is_held() -> None:
    assembler = Reassembler()
    small = Allowance("t", 1 << 20)
    with pytest.raises(WireError, match="may bring"):
        assembler.feed("t", first_frame("a"), small)
    with pytest.raises(WireError, match="out of range"):  # its frame count alone says it is too big
        assembler.feed("t", first_frame("b", count=9), Allowance("t", 8 * FRAME))
    with pytest.raises(WireError, match="out of range"):
        assembler.feed("t", first_frame("c", count=8), Allowance(EARLY, 3 * MAX_PAYLOAD_BYTES))
    assert assembler.held_bytes == 0


@pytest.mark.pure
def test_incomplete_messages_of_one_pool_share_its_allowance() -> None:
    assembler = Reassembler()
    pool = Allowance(EARLY, 3 * MAX_PAYLOAD_BYTES)
    for i in range(3):  # three first frames fit
        assert assembler.feed(f"t{i}", first_frame(f"m{i}"), pool) is None
    with pytest.raises(WireError, match="may bring"):  # the fourth, on yet another topic, does not
        assembler.feed("t3", first_frame("m3"), pool)
    assert assembler.pool_bytes(EARLY) == 3 * FRAME
    # another pool has its own allowance
    assert assembler.feed("other", first_frame("x"), Allowance("other", 2 * MAX_PAYLOAD_BYTES)) is None
    assert assembler.held_bytes == 4 * FRAME


@pytest.mark.pure
def test_empty_frames_are_not_free_and_a_pool_holds_few_incomplete_messages() -> None:
    assembler = Reassembler()
    pool = Allowance(EARLY, 1 << 30)
    for i in range(MAX_PARTIALS_PER_POOL):
        assert assembler.feed(f"t{i}", encode(ChunkMessage(f"m{i}", 0, 2, b"")), pool) is None
    assert assembler.pool_bytes(EARLY) == MAX_PARTIALS_PER_POOL * FRAME_CHARGE
    with pytest.raises(WireError, match="incomplete already"):
        assembler.feed("t-more", encode(ChunkMessage("more", 0, 2, b"")), pool)
    with pytest.raises(WireError, match="not msgpack"):  # completes: two empty halves are no message
        assembler.feed("t0", encode(ChunkMessage("m0", 1, 2, b"")), pool)
    assert assembler.pool_bytes(EARLY) == (MAX_PARTIALS_PER_POOL - 1) * FRAME_CHARGE


@pytest.mark.pure
def test_a_message_completes_within_its_allowance() -> None:
    rows = np.arange(64 * 150 * 150, dtype=np.float32).reshape(1, 64, 150, 150)
    message = RowsMessage("r", "dev-2", 3, TileRegion.of(0, 150, 0, 150), PackedArray(rows))
    parts = frames(encode(message))
    assert len(parts) == 2
    assembler = Reassembler()
    allowance = Allowance("t", wire_bytes(rows.nbytes))
    assert assembler.feed("t", parts[0], allowance) is None
    back = assembler.feed("t", parts[1], allowance)
    assert isinstance(back, RowsMessage) and np.array_equal(back.rows.array, rows)


@pytest.mark.pure
def test_incomplete_messages_expire_on_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(framing.time, "monotonic", lambda: now[0])
    assembler = Reassembler(max_age_s=10.0)
    assert assembler.feed("t", first_frame("a")) is None
    now[0] += 9.0
    assert assembler.expire() == 0 and assembler.held_bytes == FRAME
    now[0] += 2.0
    assert assembler.expire() == 1 and assembler.held_bytes == 0  # no later frame was needed


@pytest.mark.pure
def test_a_compressed_bomb_is_refused_before_it_is_inflated() -> None:
    payload = zeros_bomb("r", "dev-9", 1 << 24)  # 2 MB of bitmap declaring 64 MB of float32
    assert len(payload) < MAX_PAYLOAD_BYTES
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(WireError, match="more than this topic may bring"):
            Reassembler().feed("t", payload, Allowance("t", 4 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MB allocated before the size was refused"
    with arrays_within(64 << 20):  # within a large enough allowance it is just zeros
        assert Reassembler().feed("t", payload) is not None


@pytest.mark.pure
def test_a_flow_store_knows_what_each_sender_still_owes() -> None:
    store: FlowStore[None] = FlowStore("dev-1")
    region = TileRegion.of(0, 4, 0, 10)
    step = ProgramStep(FusedBlock(2, 3), TileRegion.of(0, 2, 0, 10), (StepInput(region, "dev-2"),))
    program = ProgramMessage(
        request="r", orchestrator="o1", model="smallcnn", digest="ab", input_hw=(64, 64), steps=(step,), expires_s=30.0
    )
    shapes = [FeatureShape(8, 10, 10)] * 4
    assert store.expects("r", "dev-2") is None  # its program has not arrived
    store.install(program, shapes, None, time.perf_counter())
    assert store.expects("r", "dev-2") == 4 * 8 * 4 * 10
    assert store.expects("r", "dev-3") == 0  # owes nothing
    store.release("r", "released")
    assert store.expects("r", "dev-2") == 0 and store.ended("r") == "released"
    assert store.holding_room("dev-9") == HOLDING_PER_SENDER


@pytest.fixture
def lone_device() -> Iterator[MemoryCluster]:
    with memory_cluster(ModelStore({"smallcnn": None}, seed=0), devices=1) as cluster:
        yield cluster


@pytest.mark.pure
def test_a_device_holds_no_more_than_its_programs_allow(
    lone_device: MemoryCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another device's credential sends first frames of 4 MB chunked messages for 40
    requests the device never heard of, then for one it is running: the device holds at
    most its small area for rows that overtook their program, and what nobody completes
    is gone on the clock, with no later frame."""
    agent = lone_device.agents["dev-1"]
    monkeypatch.setattr(agent.reassembler, "max_age_s", 0.5)
    attacker = lone_device.broker.bus("edgeci-device-dev-9")
    attacker.start()
    try:
        for i in range(40):
            attacker.publish_frame(
                DEVICE_ROWS.build(device="dev-1", sender="dev-9", request=f"r{i}"), first_frame(f"c{i}")
            )
        bomb = DEVICE_ROWS.build(device="dev-1", sender="dev-9", request="bomb")
        attacker.publish_frame(bomb, zeros_bomb("r", "dev-9", 1 << 24))
        wait_for(lambda: agent.bus.events.empty())
        held = agent.reassembler.held_bytes + agent.store.stored_bytes
        assert 0 < held <= HOLDING_PER_SENDER  # one sender's share
        wait_for(lambda: agent.reassembler.held_bytes == 0, timeout=5.0)  # expired on the tick
        # rows from a sender its program reads nothing from: refused from the topic alone
        program = ProgramMessage(
            request="live",
            orchestrator="o1",
            model="smallcnn",
            digest=agent.models.get("smallcnn").digest,
            input_hw=(64, 64),
            steps=(
                ProgramStep(
                    FusedBlock(1, 2), TileRegion.of(0, 1, 0, 32), (StepInput(TileRegion.of(0, 2, 0, 32), "dev-2"),)
                ),
            ),
            expires_s=30.0,
        )
        orchestrator = lone_device.broker.bus("edgeci-orchestrator-o9")
        orchestrator.start()
        orchestrator.publish(DEVICE_TASKS.build(device="dev-1"), encode(program))
        wait_for(lambda: agent.store.knows("live"))
        owed = agent.store.expects("live", "dev-2")
        assert owed is not None and 0 < owed < 1 << 20
        before = agent.reassembler.held_bytes
        attacker.publish_frame(DEVICE_ROWS.build(device="dev-1", sender="dev-9", request="live"), first_frame("z"))
        attacker.publish_frame(
            DEVICE_ROWS.build(device="dev-1", sender="dev-2", request="live"), first_frame("y")
        )  # even from the sender it waits for: one 4 MB frame is more than it owes
        wait_for(lambda: agent.bus.events.empty())
        assert agent.reassembler.held_bytes == before
        orchestrator.stop()
    finally:
        attacker.stop()
    assert "dev-1" in lone_device.alive()


@pytest.mark.pure
def test_the_device_gives_its_heap_back_after_a_burst(lone_device: MemoryCluster) -> None:
    released: list[float] = []
    heap = lone_device.agents["dev-1"].heap
    heap.release, heap.quiet_s = lambda: released.append(time.perf_counter()), 0.3
    attacker = lone_device.broker.bus("edgeci-device-dev-9")
    attacker.start()
    try:
        for i in range(4):  # 16 MB, refused or held: either way the heap took it
            attacker.publish_frame(
                DEVICE_ROWS.build(device="dev-1", sender="dev-9", request=f"q{i}"), first_frame(f"b{i}")
            )
        sent = time.perf_counter()
        wait_for(lambda: bool(released), timeout=5.0)
        assert released[0] - sent >= 0.3  # once quiet, not during the burst
    finally:
        attacker.stop()


@pytest.mark.broker
def test_a_real_device_under_hostile_rows_stays_small_and_returns_to_idle(
    tmp_path: Path, references: References
) -> None:
    """A device agent process (``smallcnn``), flooded on its rows topic by another device's
    credential: 150 first frames of 64 MB chunked payloads, 150 whole 4 MB rows messages
    and a chunked bomb declaring 512 MB, all for requests it never ran. Its resident memory
    grows by no more than its small area for early rows and one message being decoded, it
    is back within 20 MB of its idle size within 10 s of the flood, and it answers exactly."""
    ref = references[("smallcnn", 64, 64)]
    with (
        local_cluster(tmp_path, devices=2, models="smallcnn", strategy="flow", start=1) as small,
        EdgeCIClient(small.broker.address("client")) as own,
    ):
        own.infer(ref.x, "smallcnn", timeout=60)  # warm: what serving takes is part of its idle size
        pid = small.group.processes["dev-1"].pid
        # Idle: the worker gives the heap back after a second with no job, and nothing outside the
        # process shows when it has (no log line, no state): a fixed wait of twice that second.
        time.sleep(2.0)
        idle = resident_mb(pid)
        attacker = MqttBus(small.broker.address("dev-2"))  # a device of the cluster, not running
        attacker.start()
        try:
            with sampled_rss(pid) as rss:
                rows_flood(attacker, "dev-1", "dev-2")
        finally:
            attacker.stop()
        flooded = time.perf_counter()
        while resident_mb(pid) > idle + 20 and time.perf_counter() - flooded < 10:
            time.sleep(0.2)
        back = resident_mb(pid)
        print(
            f"MEASURED idle {idle:.0f} peak {rss.peak:.0f} back {back:.0f} after {time.perf_counter() - flooded:.1f} s"
        )
        assert rss.peak - idle < 64, f"peak {rss.peak:.0f} MB against {idle:.0f} MB idle"
        assert back <= idle + 20, f"{back:.0f} MB 10 s after the flood against {idle:.0f} MB idle"
        assert faithful(own.infer(ref.x, "smallcnn", timeout=60).logits, ref.logits32, ref.logits64)


@pytest.mark.pure
def test_rows_waiting_unread_on_a_device_bus_are_bounded_apart_from_its_orchestrators_data() -> None:
    """Another device's rows may leave 16 MB waiting unread on a device's bus; stage weights
    from an orchestrator, which come in bursts of tens of MB, keep the bus's own bound."""
    bus = MqttBus(BrokerAddress("127.0.0.1", 1, username="dev-1", password="x"), queued_limits=inbox_limits("dev-1"))

    def arrive(topic: str, size: int) -> None:  # as paho's network thread hands a message over
        message = paho.MQTTMessage(topic=topic.encode())
        message.payload = bytes(size)
        bus._on_message(bus._client, None, message)

    rows = DEVICE_ROWS.build(device="dev-1", sender="dev-9", request="r")
    fit = ROWS_INBOX_BYTES // queued_cost(rows, 1 << 20)
    for _ in range(fit + 2):
        arrive(rows, 1 << 20)
    assert bus.events.qsize() == fit and bus.dropped == 2
    for _ in range(10):
        arrive(DEVICE_TASKS.build(device="dev-1"), 4 << 20)
    assert bus.events.qsize() == fit + 10 and bus.dropped == 2
    bus.events.get_nowait()  # the reader takes one of the rows: room for one more
    arrive(rows, 1 << 20)
    assert bus.dropped == 2
    for _ in range(ROWS_INBOX_BYTES // MESSAGE_OVERHEAD):  # empty messages are not free
        arrive(rows, 0)
    assert bus.dropped > 2 and bus.events.qsize() < fit + 11 + ROWS_INBOX_BYTES // MESSAGE_OVERHEAD


@pytest.mark.pure
def test_programs_go_out_downstream_first() -> None:
    """A device's program should be in hand before its upstream neighbours' rows: they send
    as soon as they have theirs, and rows that overtake a program wait in a small area."""
    region = TileRegion.of(0, 4, 0, 4)

    def at(block: int) -> DeviceProgram:
        return DeviceProgram((ProgramStep(FusedBlock(block, block + 1), region, (StepInput(region, "o1"),)),))

    programs = {"dev-1": at(0), "dev-2": at(3), "dev-3": DeviceProgram(), "dev-4": at(3)}
    assert downstream_first(programs) == ["dev-3", "dev-2", "dev-4", "dev-1"]
