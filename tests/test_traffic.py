"""Traffic metadata for the watcher: records without data, batches only while watched, and
``edgeci watch``'s lines rendered from them as they were from the data messages themselves."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edgeci_mqtt.bus.protocol import Inbound
from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.watch.traffic import (
    BATCH_INTERVAL_S,
    REPORTED,
    WATCHER_TTL_S,
    TrafficReporter,
    describe,
    reported_by,
)
from edgeci_mqtt.watch.view import TrafficView
from edgeci_mqtt.wire import (
    DEVICE_ROWS,
    DEVICE_TASKS,
    INFER_REQUESTS,
    RESULTS,
    DoneMessage,
    FailureMessage,
    FinishRole,
    GoMessage,
    Message,
    PackedArray,
    ProgramMessage,
    ProgramStep,
    ReleaseMessage,
    ReportMessage,
    RowsMessage,
    SliceFrom,
    StepInput,
    TailRole,
    VectorMessage,
    WeightsMessage,
    decode,
    encode,
)
from edgeci_mqtt.wire.topics import DEVICE_TRAFFIC, ORCHESTRATOR_TRAFFIC, WATCHER_STATE
from edgeci_mqtt.wire.traffic_records import TensorSummary, TrafficMessage, TrafficRecord, WatcherStateMessage
from tests.cluster import collect, wait_for
from tests.exactness import References, assert_float32_faithful
from tests.inprocess import memory_cluster

pytestmark = pytest.mark.pure

RNG = np.random.default_rng(7)
IMAGE = RNG.standard_normal((1, 3, 8, 5)).astype(np.float32)
ROWS = RNG.standard_normal((1, 4, 2, 5)).astype(np.float32)
REGION = TileRegion.of(0, 2, 0, 5)


def data_messages() -> list[tuple[str, Message]]:
    """One of every message sent on a data topic between devices and orchestrators, with data."""
    step = ProgramStep(FusedBlock(0, 5), REGION, (StepInput(TileRegion.of(0, 4, 0, 5), "o1"),))
    program = ProgramMessage(
        request="q1.1", orchestrator="o1", model="vgg16", digest="ab", input_hw=(8, 5), steps=(step,),
        expires_s=30.0, input_region=TileRegion.of(0, 8, 0, 5), input=IMAGE,
        tail=TailRole((StepInput(REGION, "dev-1"),), "dev-2", Span(0, 10)),
        finish=FinishRole((SliceFrom("dev-1", Span(0, 10)),), "o1"),
    )  # fmt: skip
    results = RESULTS.build(orchestrator="o1", device="dev-1", request="q1.1")
    rows = DEVICE_ROWS.build(device="dev-2", sender="dev-1", request="q1.1")
    tasks = DEVICE_TASKS.build(device="dev-1")
    return [
        (tasks, program),
        (
            DEVICE_ROWS.build(device="dev-1", sender="o1", request="q1.1"),
            RowsMessage("q1.1", "o1", 3, REGION, PackedArray(ROWS)),
        ),
        (tasks, GoMessage("q1.1", "o1", 5)),
        (tasks, ReleaseMessage("q1.1", "o1", "done")),
        (tasks, WeightsMessage("vgg16", "ab", "features.0", {"weight": ROWS, "bias": ROWS[0, 0, 0]}, "f" * 64)),
        (rows, RowsMessage("q1.1", "dev-1", 5, REGION, PackedArray(ROWS, "zeros"))),
        (rows, VectorMessage("q1.1", "dev-1", Span(0, 10), PackedArray(ROWS[0, 0, :, :5].reshape(1, 10)))),
        (results, VectorMessage("q1.1", "dev-1", Span(0, 10), PackedArray(ROWS[0, 0, :, :5].reshape(1, 10)), True)),
        (results, RowsMessage("q1.1", "dev-1", 9, REGION, PackedArray(ROWS))),
        (results, FailureMessage("q1.1", "dev-1", -1, "refused: no")),
        (results, DoneMessage("q1.1", "dev-1", 5)),
        (
            results,
            ReportMessage(
                "q1.1",
                "dev-1",
                0,
                started_at=1.0,
                computed_at=1.004,
                sent_at=1.006,
                block=FusedBlock(0, 5),
                region=REGION,
            ),
        ),
    ]


def leaves(value: Any) -> Iterator[Any]:
    """Every value inside a record, however nested."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from leaves(getattr(value, f.name))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def test_a_record_carries_no_data_only_what_a_watch_line_shows() -> None:
    for topic, message in data_messages():
        payload = encode(message)
        record = describe(topic, message, len(payload))
        assert not [v for v in leaves(record) if isinstance(v, bytes | bytearray | np.ndarray | PackedArray)]
        assert all(isinstance(v, str | int | float | bool | type(None)) for v in leaves(record)), record
        wire = encode(TrafficMessage("dev-1", (record,)))
        for array in (IMAGE, ROWS, IMAGE[0, 0], ROWS[0, 0]):  # not a row of it travels
            assert array[..., 0, :].tobytes() not in wire
        assert decode(wire) == TrafficMessage("dev-1", (record,))  # typed and validated like every message
        assert record.size == len(payload) and record.kind == message.kind
    program = describe(*data_messages()[0], 1000)
    assert program.tensor == TensorSummary("float32", (1, 3, 8, 5), IMAGE.nbytes) and program.steps == 1
    assert program.tail and program.finish and program.request == "q1.1"


def test_traffic_messages_are_bounded_and_checked() -> None:
    record = TrafficRecord("t", "rows", 10)
    with pytest.raises(WireError, match="more than allowed"):
        decode(encode(TrafficMessage("dev-1", (record,) * 513)))
    with pytest.raises(WireError, match=r"cannot be a traffic\.sender"):
        decode(encode(TrafficMessage("dev/1", (record,))))
    with pytest.raises(WireError):
        decode(encode(TrafficMessage("dev-1", (dataclasses.replace(record, size=-1),))))


def watcher(reporter: TrafficReporter, name: str, online: bool, now: float) -> bool:
    return reporter.heard(WATCHER_STATE.build(watcher=name), encode(WatcherStateMessage(name, online)), now)


def test_the_reporter_collects_only_while_watched_and_batches_by_time() -> None:
    reporter = TrafficReporter("dev-1", interval_s=0.2)
    topic, message = data_messages()[5]
    reporter.note(topic, message, 100, now=0.0)
    assert not reporter.pending() and reporter.take(10.0, force=True) is None  # nobody watches: nothing kept
    assert not reporter.heard(DEVICE_TASKS.build(device="dev-1"), b"", 0.0)  # not a watcher's: for the role
    assert watcher(reporter, "w1", True, now=1.0) and reporter.watched(1.0)
    assert reporter.heard(WATCHER_STATE.build(watcher="w2"), encode(WatcherStateMessage("w1", False)), 1.0)  # forged
    assert reporter.heard(WATCHER_STATE.build(watcher="w2"), b"garbage", 1.0) and reporter.watched(1.0)
    reporter.note(INFER_REQUESTS.build(client="c"), message, 100, now=1.0)  # the clients' topics: never reported
    assert not reporter.pending()
    reporter.note(topic, message, 100, now=1.0)
    reporter.note(topic, message, 120, now=1.05)
    assert reporter.wait_s(1.1) == pytest.approx(0.1)
    assert reporter.take(1.1) is None  # not due: one batch per interval of activity
    batch = reporter.take(1.25)
    assert batch is not None and batch.sender == "dev-1" and [r.size for r in batch.records] == [100, 120]
    assert [r.before_s for r in batch.records] == pytest.approx([0.25, 0.2])
    assert reporter.take(5.0, force=True) is None
    watcher(reporter, "w1", False, now=2.0)
    reporter.note(topic, message, 100, now=2.0)
    assert not reporter.watched(2.0) and not reporter.pending()
    watcher(reporter, "w1", True, now=3.0)  # a retained "online" never taken back lapses
    assert reporter.watched(3.0 + WATCHER_TTL_S - 1) and not reporter.watched(3.0 + WATCHER_TTL_S + 1)


def test_a_full_batch_goes_at_once_and_counts_what_it_left_out() -> None:
    reporter = TrafficReporter("dev-1", interval_s=10.0, max_records=3)
    watcher(reporter, "w1", True, now=0.0)
    topic, message = data_messages()[5]
    for _ in range(5):
        reporter.note(topic, message, 10, now=0.0)
    batch = reporter.take(0.0)
    assert batch is not None and len(batch.records) == 3 and batch.dropped == 2


def test_a_sender_reports_only_what_it_may_have_sent() -> None:
    mine = TrafficMessage("dev-1", ())
    rows_as = DEVICE_ROWS.build(device="dev-2", sender="dev-1", request="r")
    results_as = RESULTS.build(orchestrator="o1", device="dev-1", request="r")
    assert reported_by(DEVICE_TRAFFIC.build(device="dev-1"), mine, TrafficRecord(rows_as, "rows", 1))
    assert reported_by(DEVICE_TRAFFIC.build(device="dev-1"), mine, TrafficRecord(results_as, "result", 1))
    forged_rows = DEVICE_ROWS.build(device="dev-2", sender="dev-3", request="r")
    assert not reported_by(DEVICE_TRAFFIC.build(device="dev-1"), mine, TrafficRecord(forged_rows, "rows", 1))
    assert not reported_by(
        DEVICE_TRAFFIC.build(device="dev-1"), mine, TrafficRecord(DEVICE_TASKS.build(device="dev-2"), "task", 1)
    )
    assert not reported_by(
        DEVICE_TRAFFIC.build(device="dev-9"), mine, TrafficRecord(rows_as, "rows", 1)
    )  # not its topic
    tasks = TrafficRecord(DEVICE_TASKS.build(device="dev-2"), "program", 1)
    assert reported_by(ORCHESTRATOR_TRAFFIC.build(orchestrator="o1"), TrafficMessage("o1", ()), tasks)
    assert {p.template for p in REPORTED} == {"devices/{device}/tasks", "devices/{device}/rows/{sender}/{request}",
                                              "orchestrators/{orchestrator}/results/{device}/{request}"}  # fmt: skip


def test_watch_lines_from_reports_read_as_from_the_data_messages() -> None:
    """A view fed the data messages themselves (a broker without roles) and one fed the
    senders' reports print the same lines, timings included."""
    direct, reported = TrafficView(), TrafficView()
    orchestrator, device = TrafficReporter("o1"), TrafficReporter("dev-1")
    for reporter in (orchestrator, device):
        watcher(reporter, "w", True, now=0.0)
    expected = []
    for i, (topic, message) in enumerate(data_messages()):
        expected += direct.feed(topic, encode(message), now=10.0 + i * 0.01)
        from_orchestrator = DEVICE_TASKS.parse(topic) or (DEVICE_ROWS.parse(topic) or {}).get("sender") == "o1"
        sender = orchestrator if from_orchestrator else device
        sender.note(topic, message, len(encode(message)), now=i * 0.01)
    lines = []
    for reporter, topic in (
        (orchestrator, ORCHESTRATOR_TRAFFIC.build(orchestrator="o1")),
        (device, DEVICE_TRAFFIC.build(device="dev-1")),
    ):
        batch = reporter.take(1.0)
        assert batch is not None
        lines += reported.feed(topic, encode(batch), now=11.0)  # arrived 1 s after it was sent: same instants
    assert sorted(lines) == sorted(expected)
    text = "\n".join(lines)
    for today in (  # as edgeci watch showed them from the data messages
        "program q1.1 for dev-1: 1 steps + tail + finish, rows [0,8)x[0,5) of boundary 0 float32[1, 3, 8, 5] 480 B",
        "rows q1.1 from o1: boundary 3",
        "rows q1.1 from dev-1: boundary 5",
        "as zeros",
        "results/dev-1/q1.1  logits q1.1 from dev-1",
        "tasks  release q1.1 by o1: done",
        "failure q1.1 from dev-1: its program: refused: no",
        "compute 4.0 ms, send 2.0 ms",
        "weights vgg16 stage features.0 for dev-1: 2 tensors",
    ):
        assert today in text, today


def test_a_forged_report_is_shown_as_invalid() -> None:
    view = TrafficView()
    forged = TrafficRecord(DEVICE_ROWS.build(device="dev-2", sender="dev-3", request="r"), "rows", 1)
    lines = view.feed(DEVICE_TRAFFIC.build(device="dev-1"), encode(TrafficMessage("dev-1", (forged,), 4)), 0.0)
    assert "INVALID: dev-1 cannot have sent a rows" in lines[0] and "4 more message(s)" in lines[1]


def test_in_process_the_agents_report_only_while_a_watcher_is_online(
    references: References,
) -> None:
    """Devices and the orchestrator publish no traffic report until a watcher announces
    itself; then every program, rows message and result of a request is reported, and
    none of them carries a byte of the image."""
    ref = references[("smallcnn", 64, 64)]
    store = ModelStore({"smallcnn": None}, seed=0)
    with memory_cluster(store, devices=2, strategy="flow") as small, small.client() as own:
        spy = small.broker.bus("spy")
        spy.subscribe(DEVICE_TRAFFIC.filter)
        spy.subscribe(ORCHESTRATOR_TRAFFIC.filter)
        spy.start()
        own.infer(ref.x, "smallcnn", timeout=60)
        # nobody watches: no report at all (a negative check: a report goes out within one
        # batch interval, so three show it)
        assert not collect(spy, BATCH_INTERVAL_S * 3)
        watching = small.broker.bus("w1")
        watching.will(WATCHER_STATE.build(watcher="w1"), encode(WatcherStateMessage("w1", False)))
        watching.start()
        watching.publish(WATCHER_STATE.build(watcher="w1"), encode(WatcherStateMessage("w1", True)), retain=True)
        wait_for(
            lambda: all(a._traffic.reporter.watched(time.monotonic()) for a in small.agents.values()),
            what="every device knowing it is watched",
        )
        result = own.infer(ref.x, "smallcnn", timeout=60)
        assert_float32_faithful(result.logits, ref.logits32, ref.logits64, "watched")
        view, lines, reports = TrafficView(), list[str](), list[Inbound]()
        deadline = time.monotonic() + 10
        while not any(" logits " in line for line in lines) and time.monotonic() < deadline:
            for event in collect(spy, 0.2):
                reports.append(event)
                lines += view.feed(event.topic, event.payload, time.monotonic())
        text = "\n".join(lines)
        assert "program " in text and " logits " in text and "INVALID" not in text, text
        image = ref.x.numpy()
        assert not any(image[0, 0, 10].tobytes() in e.payload for e in reports)
        watching.crash()  # its will: offline
        wait_for(
            lambda: not any(a._traffic.reporter.watched(time.monotonic()) for a in small.agents.values()),
            what="every device knowing it is no longer watched",
        )
        collect(spy, BATCH_INTERVAL_S * 2)  # what was batched while watched: out within an interval
        own.infer(ref.x, "smallcnn", timeout=60)
        assert not collect(spy, BATCH_INTERVAL_S * 3)  # no report: none within three intervals
        spy.stop()


def test_the_publisher_hands_watcher_states_over_and_leaves_other_events() -> None:
    from edgeci_mqtt.bus.memory import MemoryBroker
    from edgeci_mqtt.watch.traffic import TrafficPublisher

    publisher = TrafficPublisher(MemoryBroker().bus("dev-1"), "dev-1", DEVICE_TRAFFIC.build(device="dev-1"))
    assert not publisher.heard(Inbound(DEVICE_TASKS.build(device="dev-1"), b"x"))
    assert publisher.heard(Inbound(WATCHER_STATE.build(watcher="w"), encode(WatcherStateMessage("w", True))))
    assert publisher.watching(DEVICE_ROWS.build(device="dev-2", sender="dev-1", request="r"))
    assert not publisher.watching(INFER_REQUESTS.build(client="c"))
    publisher.stop()
