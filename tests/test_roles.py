"""The roles' real code in one process, on a MemoryBroker: decisions, recovery, hostile input.

Every model and strategy gives the model's own result (float32, judged against a float64
oracle); a device lost mid-inference, a silent device, late and duplicate results, and
hostile payloads on every topic the roles subscribe to are handled without a broker.
What only Mosquitto can show (ACL file, limits, restarts, wills over TCP) is in
test_runtime.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgeci_mqtt.bus.protocol import Inbound, events_until
from edgeci_mqtt.client import EdgeCIClient, InferenceResult
from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.link import Link, Medium
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.device.bidder import Bidder
from edgeci_mqtt.device.programs import ReadyStep, ValidProgram, run_step
from edgeci_mqtt.errors import InferenceError, InputError, WireError
from edgeci_mqtt.exactness import faithful
from edgeci_mqtt.models.held import ModelStore, weights_digest
from edgeci_mqtt.orchestrator.device_table import DeviceTable
from edgeci_mqtt.orchestrator.run import EXPIRY_MARGIN_S
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval
from edgeci_mqtt.wire import (
    AUCTION_BIDS,
    AUCTION_CALL,
    CLIENT_RESPONSES,
    DEVICE_PROBE,
    DEVICE_ROWS,
    DEVICE_STATE,
    DEVICE_TASKS,
    INFER_REQUESTS,
    RESULTS,
    AuctionLot,
    CallMessage,
    DeviceStateMessage,
    PackedArray,
    ProgramMessage,
    ProgramStep,
    RequestMessage,
    RowsMessage,
    StepInput,
    StepSend,
    TailRole,
    decode,
    encode,
)
from tests.cluster import wait_for
from tests.exactness import References, assert_float32_faithful
from tests.hostile import DEVICE_COMPLAINTS, ORCHESTRATOR_COMPLAINTS, WILDCARD_RESPONSE_TOPIC, hostile_payloads
from tests.inprocess import DEVICE_GFLOPS, MemoryCluster, memory_cluster
from tests.planning import flat_profile

MODELS = ("smallcnn", "vgg16", "resnet34")
pytestmark = [
    pytest.mark.pure,
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),  # no thread may die
]


@pytest.fixture(scope="module")
def store() -> ModelStore:
    """One set of weights shared by every in-process role (seeded like the chains fixture)."""
    return ModelStore(dict.fromkeys(MODELS), seed=0)


@pytest.fixture(scope="module")
def cluster(store: ModelStore) -> Iterator[MemoryCluster]:
    with memory_cluster(store, devices=3) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster: MemoryCluster) -> Iterator[EdgeCIClient]:
    with cluster.client() as connected:
        yield connected


@pytest.mark.parametrize("model", MODELS)
def test_every_model_and_strategy_gives_the_models_result(
    client: EdgeCIClient, references: References, model: str
) -> None:
    # 96x96: every block, tile and halo rule is exercised as at 224 (the float64 geometry tests
    # cover 224), at a ninth of the compute, so the whole in-process tier stays fast.
    size = 64 if model == "smallcnn" else 96
    ref = references[(model, size, size)]
    for strategy in STRATEGY_NAMES:
        result = client.infer(ref.x, model, strategy, timeout=120)
        assert_float32_faithful(result.logits, ref.logits32, ref.logits64, f"{model} {strategy}")
        assert result.strategy == strategy and result.orchestrator == "o1" and result.devices


@pytest.mark.parametrize("strategy", ["deepthings", "edgeci"])
def test_a_traced_request_returns_the_measured_timeline(
    client: EdgeCIClient, references: References, strategy: str
) -> None:
    ref = references[("smallcnn", 64, 64)]
    x = ref.x
    assert client.infer(x, "smallcnn", strategy, timeout=60).timeline == ()
    result = client.infer(x, "smallcnn", strategy, timeout=60, trace=True)
    assert faithful(result.logits, ref.logits32, ref.logits64)
    by_kind: dict[str, list[Interval]] = {}
    for interval in result.timeline:
        assert 0.0 <= interval.start <= interval.end <= result.latency_s, interval
        by_kind.setdefault(interval.kind, []).append(interval)
    orchestrator = {i.kind for i in result.timeline if i.resource == ORCHESTRATOR}
    assert {"plan", "prepare", "merge", "tail"} <= orchestrator
    assert ("auction" in orchestrator) == (strategy == "edgeci")
    assert "gateway" not in orchestrator or strategy == "deepthings"  # smallcnn is all in its fused block
    # a gathering strategy: every step's tile goes to the orchestrator, which stitches it once
    steps = by_kind["compute"]
    assert sorted(map(str, (i.region for i in steps))) == sorted(map(str, (i.region for i in by_kind["merge"])))
    assert {i.resource for i in steps} == set(result.devices)
    sends = {(i.resource, i.block, i.region): i for i in by_kind.get("send", [])}
    for work in steps:
        assert work.block is not None and work.region is not None
        up = sends.get((work.resource, work.block, work.region))
        assert up is None or work.end <= up.start


class ResultEcho:
    """Publishes a copy of every result it sees (as someone else would: the orchestrator
    checks the device field and the task, not the publisher), now or when asked."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self.bus = cluster.broker.bus("echo")
        self.bus.subscribe(RESULTS.filter)
        self.seen: list[Inbound] = []
        self.copies = 0
        self.live = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ResultEcho:
        self.bus.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.bus.stop()

    def _run(self) -> None:
        for event in events_until(self.bus, self._stop, poll_s=0.05):
            if isinstance(event, Inbound) and event.payload not in (m.payload for m in self.seen):
                self.seen.append(event)
                if self.live:
                    self.replay(event)

    def replay(self, event: Inbound) -> None:
        self.copies += 1
        self.bus.publish(event.topic, event.payload)


def test_duplicate_and_late_results_are_ignored(
    cluster: MemoryCluster, client: EdgeCIClient, references: References
) -> None:
    """A duplicate is not stitched twice (one merge per task sent); a result of a finished
    request is dropped by its request id; neither counts as a recovery or harms the next one."""
    ref = references[("smallcnn", 64, 64)]
    x = ref.x
    with ResultEcho(cluster) as echo:
        echo.live = True  # every result arrives twice
        result = client.infer(x, "smallcnn", "modnn", timeout=60, trace=True)
        assert echo.copies >= 3 and result.timings["recovered_tasks"] == 0
        assert faithful(result.logits, ref.logits32, ref.logits64)
        kinds = [i.kind for i in result.timeline]
        assert kinds.count("merge") == kinds.count("compute")  # each tile came twice, was stitched once
        echo.live = False
        for event in list(echo.seen):  # every result of finished requests, again: late
            echo.replay(event)
        again = client.infer(x, "smallcnn", "aofl", timeout=60)
    assert faithful(again.logits, ref.logits32, ref.logits64) and again.timings["recovered_tasks"] == 0
    assert sorted(cluster.alive()) == sorted([*cluster.agents, "o1"])


def test_the_auction_does_not_wait_for_a_device_the_plan_leaves_idle(store: ModelStore, references: References) -> None:
    """A ghost device that announces itself but never bids: far too slow to be given work,
    it must not hold every auction to the end of its window."""
    ref = references[("smallcnn", 64, 64)]
    x = ref.x
    window_s = 4.0
    with memory_cluster(store, devices=2, auction_s=window_s) as small, small.client() as own:
        digest = weights_digest("smallcnn", None, 0)
        ghost = DeviceStateMessage(
            "dev-9", True, profile=flat_profile(gflops=1e-4), link=Link(1.0, 50.0), models={"smallcnn": digest}
        )
        announcer = small.broker.bus("announcer")
        announcer.start()
        announcer.publish(DEVICE_STATE.build(device="dev-9"), encode(ghost), retain=True)
        small.wait_for_table({"dev-1", "dev-2", "dev-9"})
        result = own.infer(x, "smallcnn", "edgeci", timeout=60, trace=True)
        assert faithful(result.logits, ref.logits32, ref.logits64) and "dev-9" not in result.devices
        assert result.timings["auction_s"] < window_s / 4, result.timings
        auction = [i for i in result.timeline if i.kind == "auction"]
        assert auction and "dev-9" not in {i.resource for i in result.timeline}


def test_devices_with_no_memory_for_a_tail_serve_vgg16_exactly(references: References) -> None:
    """Devices with no memory for a tail hold VGG-16 without its classifier (on the meta
    device) and are never given a part of it; the answer is exact."""
    ref = references[("vgg16", 64, 64)]
    full = ModelStore({"vgg16": None}, seed=0)
    lean = ModelStore({"vgg16": None}, seed=0, tail=False)
    assert lean.get("vgg16").chain.model.classifier[0].weight.is_meta
    with memory_cluster(full, devices=0, strategy="flow") as small:
        for name in ("dev-1", "dev-2"):
            small.add_device(name, store=lean, tail_memory_bytes=0)
        small.wait_for_table({"dev-1", "dev-2"})
        with small.client() as own:
            for strategy in ("flow", "edgeci"):
                result = own.infer(ref.x, "vgg16", strategy, timeout=120)
                assert_float32_faithful(result.logits, ref.logits32, ref.logits64, strategy)
                assert set(result.devices) <= {"dev-1", "dev-2"} and result.devices
    assert lean.get("vgg16").chain.model.classifier[0].weight.is_meta  # never made any of it
    assert not lean.get("vgg16")._chunks


@pytest.mark.parametrize("strategy", ["edgeci", "flow"])
def test_a_device_that_misses_a_round_is_not_waited_for_until_it_bids_again(
    store: ModelStore, references: References, strategy: str
) -> None:
    """A device the plan counts on stops answering (connected, announced online, silent):
    it costs one round its whole window, then no more; once it bids again, it works again."""
    ref = references[("smallcnn", 160, 160)]  # big enough that ``flow`` splits it
    window_s = 2.0
    with memory_cluster(store, devices=3, strategy=strategy, auction_s=window_s) as small, small.client() as own:
        assert "dev-3" in own.infer(ref.x, "smallcnn", timeout=60).devices  # the plan counts on it
        small.muted.add(small.bus_of("dev-3").client_id)
        first = own.infer(ref.x, "smallcnn", timeout=60)
        assert first.timings["auction_s"] >= window_s * 0.9  # it waited for dev-3 once
        assert faithful(first.logits, ref.logits32, ref.logits64) and "dev-3" in small.orchestrator.mail.silence
        for _ in range(2):
            later = own.infer(ref.x, "smallcnn", timeout=60)
            assert faithful(later.logits, ref.logits32, ref.logits64) and "dev-3" not in later.devices
            assert later.timings["auction_s"] < window_s / 4, later.timings
        small.muted.clear()  # it answers again: its next bid counts
        penalties = small.orchestrator.penalties  # had it been given work while silent, it is held out a while
        wait_for(lambda: "dev-3" not in penalties.excluded(time.perf_counter()), 30, "dev-3's penalty ending")
        used = set()
        for _ in range(3):
            used |= set(own.infer(ref.x, "smallcnn", timeout=60).devices)
        assert "dev-3" not in small.orchestrator.mail.silence and "dev-3" in used


def test_a_cold_cluster_makes_the_tail_weights_ahead_and_then_splits_the_tail(
    store: ModelStore, references: References
) -> None:
    """Devices start without VGG-16's classifier. Making their shares of it (as priced by
    their profiles) costs more than the slow orchestrator running it, so the first request's
    tail runs there, and its programs ask the devices to make those rows when idle. They do,
    announce them, and the next request splits the first layer over them, making nothing:
    both answers exact."""
    ref = references[("vgg16", 64, 64)]
    digest = store.get("vgg16").digest
    slow_fc = flat_profile().scaled(0.05)  # runs the 411 MB layer in 0.4 s
    with memory_cluster(store, devices=0, strategy="flow", orchestrator_profile=slow_fc) as cold:
        for name in ("dev-1", "dev-2"):  # each its own weights: what one makes, the other lacks
            device = flat_profile(DEVICE_GFLOPS, made=0.2e9)
            cold.add_device(name, device, store=ModelStore({"vgg16": None}, seed=0, tail=False))
        cold.wait_for_table({"dev-1", "dev-2"})

        def tail_note(result: InferenceResult) -> str:
            (tail,) = [i for i in result.timeline if i.resource == ORCHESTRATOR and i.kind == "tail"]
            return tail.note

        with cold.client() as own:
            first = own.infer(ref.x, "vgg16", "flow", timeout=120, trace=True)
            assert_float32_faithful(first.logits, ref.logits32, ref.logits64, "cold")
            assert tail_note(first) == "" and first.timings["whole_request"] == 0  # split, its tail on the orchestrator

            def announced() -> list[TailRows]:
                return [v.tail or TailRows() for v in cold.orchestrator.table.views("vgg16", digest)]

            # the split's rows between them, and the layers after the first on its finisher
            wait_for(
                lambda: (
                    sum(run.size for t in announced() for run in t.first) >= 4096 and any(t.rest for t in announced())
                ),
                60,
                "the devices announcing the tail rows they made",
            )
            held = {n: a.models.get("vgg16").tail_rows() for n, a in cold.agents.items()}
            assert all(len(t.first) == 1 for t in held.values()), held  # each its own run, no more
            second = own.infer(ref.x, "vgg16", "flow", timeout=120, trace=True)
            assert_float32_faithful(second.logits, ref.logits32, ref.logits64, "warm")
            assert tail_note(second).startswith("first layer split over dev-1, dev-2")
            assert {n: a.models.get("vgg16").tail_rows() for n, a in cold.agents.items()} == held  # nothing made


def test_a_tail_that_is_slower_on_the_devices_than_measured_moves_to_the_orchestrator(
    store: ModelStore, references: References, caplog: pytest.LogCaptureFixture
) -> None:
    """Priced by their profiles, VGG-16's tail goes to the two devices (which hold its
    weights); but their workers run it slowly (boards busy with something else). The
    orchestrator tries its own placement every third request; once both are measured, its
    tail runs there, the devices' placement still tried now and then. Every answer exact."""
    ref = references[("vgg16", 64, 64)]
    slow_fc = flat_profile().scaled(0.05)
    with memory_cluster(store, devices=0, strategy="flow", orchestrator_profile=slow_fc) as warm:
        for name in ("dev-1", "dev-2"):
            agent = warm.add_device(name, flat_profile(DEVICE_GFLOPS), store=ModelStore({"vgg16": None}))

            def slow_tail(ready: ReadyStep[ValidProgram]) -> np.ndarray:
                if isinstance(ready.item, TailRole):
                    time.sleep(0.3)  # orders nothing: the tail is just slow there
                return run_step(ready)

            agent.worker.compute = slow_tail
        warm.wait_for_table({"dev-1", "dev-2"})

        def tail_on_devices(result: InferenceResult) -> bool:
            (tail,) = [i for i in result.timeline if i.resource == ORCHESTRATOR and i.kind == "tail"]
            assert_float32_faithful(result.logits, ref.logits32, ref.logits64, tail.note)
            return tail.note != ""

        with warm.client() as own, caplog.at_level(logging.INFO, logger="edgeci.orchestrator"):
            served = [tail_on_devices(own.infer(ref.x, "vgg16", "flow", timeout=120, trace=True)) for _ in range(12)]
    assert served[:9] == [True, True, False] * 3  # the planner's placement, the other tried every third
    assert served[9:] == [True, False, False]  # measured: the orchestrator's, the devices' tried every tenth
    assert "the tail runs on the orchestrator from now" in caplog.text


@pytest.mark.parametrize("strategy", ["aofl", "deepthings", "flow"])
def test_a_device_lost_mid_inference(store: ModelStore, references: References, strategy: str) -> None:
    """A device the plan uses goes silent while it holds work, then its connection drops:
    the broker publishes its will, its work is recovered on the others, and the result is exact."""
    ref = references[("smallcnn", 96, 96)]
    x = ref.x
    with memory_cluster(store, devices=3, strategy=strategy) as small, small.client() as own:
        used = own.infer(x, "smallcnn", timeout=60).devices
        victim = "dev-2" if "dev-2" in used else used[0]
        killer = threading.Timer(0.3, small.bus_of(victim).crash)
        if strategy == "flow":  # a silent device does not bid: it falls silent once it holds its work
            fell = threading.Event()

            def fall_silent(ready: ReadyStep[ValidProgram]) -> np.ndarray:
                small.muted.add(f"edgeci-device-{victim}")
                if not fell.is_set():
                    fell.set()
                    killer.start()
                return run_step(ready)

            small.agents[victim].worker.compute = fall_silent
        else:
            small.muted.add(f"edgeci-device-{victim}")
            killer.start()
        try:
            result = own.infer(x, "smallcnn", timeout=60)
        finally:
            killer.join()
        assert faithful(result.logits, ref.logits32, ref.logits64) and result.timings["recovered_tasks"] >= 1
        assert victim not in small.orchestrator.table.online()
        after = own.infer(x, "smallcnn", timeout=60)
        assert victim not in after.devices and faithful(after.logits, ref.logits32, ref.logits64)


def side_by_side(cluster: MemoryCluster, count: int, ask: Callable[[EdgeCIClient], None]) -> None:
    """``ask`` from ``count`` clients at once, each in a thread with a session of its own;
    fails with what any of them raised."""
    failures: list[BaseException] = []

    def client(name: str) -> None:
        try:
            with cluster.client(name) as own:
                ask(own)
        except BaseException as exc:  # reported below, from the test's own thread
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(f"client-{i}",)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures


@pytest.mark.parametrize("strategy", ["flow", "replicas"])
def test_requests_run_side_by_side_and_stay_exact(store: ModelStore, references: References, strategy: str) -> None:
    """Four clients at once, twice each: the orchestrator does not serialise them (their
    times overlap), no device store keeps rows afterwards, every answer is exact; whole
    requests (``replicas``) spread over the devices by the work already handed out."""
    ref = references[("smallcnn", 96, 96)]
    spans: list[tuple[float, float]] = []
    used: set[str] = set()
    with memory_cluster(store, devices=3, strategy=strategy) as small:

        def ask(own: EdgeCIClient) -> None:
            for _ in range(2):
                started = time.perf_counter()
                result = own.infer(ref.x, "smallcnn", timeout=60)
                spans.append((started, time.perf_counter()))
                used.update(result.devices)
                assert faithful(result.logits, ref.logits32, ref.logits64)

        side_by_side(small, 4, ask)
        assert len(spans) == 8
        most = max(sum(a <= t < b for a, b in spans) for t, _ in spans)
        assert most >= 2, "requests were served one at a time"
        assert strategy != "replicas" or len(used) >= 2, f"every whole request went to {used}"
        deadline = time.perf_counter() + 5
        while any(agent.store.stored_bytes for agent in small.agents.values()) and time.perf_counter() < deadline:
            time.sleep(0.05)
        assert all(agent.store.stored_bytes == 0 and not agent.store.requests() for agent in small.agents.values())


def test_a_burst_of_flow_requests_sees_its_own_load(store: ModelStore, references: References) -> None:
    """Four requests at once: the first finds the cluster idle and splits; the others find
    every device busy with it and run whole, each on one device (decided one after another:
    decided side by side, all four split and each ran at a quarter of its predicted speed).
    A large image keeps the first split busy while the others decide."""
    ref = references[("smallcnn", 320, 320)]
    modes: list[float] = []
    start = threading.Barrier(4)
    with memory_cluster(store, devices=3, strategy="flow") as small:
        with small.client("warm") as own:
            own.infer(ref.x, "smallcnn", timeout=60)  # plans and weights ready: the burst decides fast

        def ask(own: EdgeCIClient) -> None:
            start.wait(timeout=30)
            result = own.infer(ref.x, "smallcnn", timeout=60)
            modes.append(result.timings["whole_request"])
            assert faithful(result.logits, ref.logits32, ref.logits64)

        side_by_side(small, 4, ask)
    assert sorted(modes) == [0.0, 1.0, 1.0, 1.0]


def test_a_silent_device_is_replaced_after_its_deadline(store: ModelStore, references: References) -> None:
    ref = references[("smallcnn", 96, 96)]
    x = ref.x
    allowance = 0.5
    with (
        memory_cluster(store, devices=2, strategy="modnn", min_allowance_s=allowance) as small,
        small.client() as own,
    ):
        own.infer(x, "smallcnn", timeout=60)
        small.muted.add("edgeci-device-dev-1")  # connected, no will, never answers
        started = time.perf_counter()
        result = own.infer(x, "smallcnn", timeout=60)
        assert faithful(result.logits, ref.logits32, ref.logits64) and result.timings["recovered_tasks"] >= 1
        assert allowance <= time.perf_counter() - started < 30  # given up after its allowance, not the 60 s timeout
        assert result.devices == ["dev-1", "dev-2"]  # dev-1 was sent work before it was given up


def test_after_a_late_flow_attempt_the_next_allows_twice_as_long(store: ModelStore, references: References) -> None:
    """A device that bid and works, only slowly (busy, not lost), holds back its last item of
    the first attempt past the deadline; the attempt fails as late, and the next one, planned
    without whoever still owed it, allows twice as long (a deadline is a prediction). Exact."""
    ref = references[("smallcnn", 160, 160)]  # big enough that ``flow`` splits it
    allowance = 0.5  # above five times any prediction here: every attempt gets it, or its double
    with (
        memory_cluster(store, devices=3, strategy="flow", min_allowance_s=allowance) as small,
        small.client() as own,
    ):
        own.infer(ref.x, "smallcnn", timeout=60)
        spy = small.broker.bus("spy")  # sees every program as the devices do
        spy.subscribe(DEVICE_TASKS.filter)
        spy.start()

        def late_last_item(ready: ReadyStep[ValidProgram]) -> np.ndarray:
            message = ready.context.message
            items = len(message.steps) + (message.tail is not None) + (message.finish is not None)
            if message.request.endswith(".1") and ready.index == items - 1:
                time.sleep(1.5 * allowance)  # late, yet free again well within the next attempt's allowance
            return run_step(ready)

        small.agents["dev-1"].worker.compute = late_last_item
        result = own.infer(ref.x, "smallcnn", timeout=60)
        expiries: dict[str, set[float]] = {}
        while not spy.events.empty():  # the broker delivered each program to the spy as it did to its device
            event = spy.events.get_nowait()
            message = decode(event.payload) if isinstance(event, Inbound) else None
            if isinstance(message, ProgramMessage):
                expiries.setdefault(message.request.rsplit(".", 1)[1], set()).add(message.expires_s)
        spy.stop()
        assert faithful(result.logits, ref.logits32, ref.logits64) and result.timings["recovered_tasks"] == 1
        assert result.timings["whole_request"] == 0 and "dev-1" in result.devices
        assert expiries.keys() == {"1", "2"}
        assert sorted(expiries["1"]) == pytest.approx([allowance + EXPIRY_MARGIN_S])
        assert sorted(expiries["2"]) == pytest.approx([2 * allowance + EXPIRY_MARGIN_S])


def test_a_device_goes_on_with_the_oldest_request_that_has_a_step_ready(
    store: ModelStore, references: References
) -> None:
    """Programs A, B and C reach a device in that order. A's step waits for rows from
    another device; B and C are whole requests in two steps each. A's rows arrive while B's
    first step runs: next comes A's step (the oldest request), then B's second, then C's
    (in arrival order alone C's first step, queued before A's rows came, would go first)."""
    held = store.get("smallcnn")
    shapes = held.shapes(64, 64)
    last, cut = len(held.chain.stages), 2
    whole = [TileRegion.whole(shape.height, shape.width) for shape in shapes]
    image = np.asarray(references[("smallcnn", 64, 64)].x, dtype=np.float32)

    def program(request: str, steps: tuple[ProgramStep, ...], with_image: bool) -> ProgramMessage:
        region, pixels = (whole[0], image) if with_image else (None, None)
        return ProgramMessage(
            request=request,
            orchestrator="o1",
            model="smallcnn",
            digest=held.digest,
            input_hw=(64, 64),
            steps=steps,
            expires_s=30.0,
            input_region=region,
            input=pixels,
        )

    piece = TileRegion(Span(0, 2), Span(0, shapes[1].width))  # what A's row 0 of block 1-2 reads
    waiting = ProgramStep(FusedBlock(1, 2), TileRegion(Span(0, 1), whole[2].cols), (StepInput(piece, "dev-9"),))
    waiting = replace(waiting, sends=(StepSend(waiting.out_region, "o1"),))
    first = ProgramStep(FusedBlock(0, cut), whole[cut], (StepInput(whole[0], "o1"),))
    second = ProgramStep(
        FusedBlock(cut, last), whole[last], (StepInput(whole[cut], "dev-1"),), (StepSend(whole[last], "o1"),)
    )
    ran: list[tuple[str, int]] = []
    with memory_cluster(store, devices=1) as small:
        agent, other = small.agents["dev-1"], small.broker.bus("edgeci-device-dev-9")
        other.start()

        def recorded(ready: ReadyStep[ValidProgram]) -> np.ndarray:
            request = ready.context.message.request
            if (request, ready.index) == ("B", 0):  # A's rows come while B's first step runs
                deadline = time.monotonic() + 10
                while not agent.store.knows("C"):
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                rows = np.ones((1, shapes[1].channels, piece.height, piece.width), dtype=np.float32)
                other.publish(
                    DEVICE_ROWS.build(device="dev-1", sender="dev-9", request="A"),
                    encode(RowsMessage("A", "dev-9", 1, piece, PackedArray(rows))),
                )
                while len(agent.worker.jobs) < 2:  # C's first step, and now A's
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            ran.append((request, ready.index))
            return run_step(ready)

        agent.worker.compute = recorded
        try:
            publisher = small.broker.bus("edgeci-orchestrator-o9")
            publisher.start()
            for request, steps, with_image in (
                ("A", (waiting,), False),
                ("B", (first, second), True),
                ("C", (first, second), True),
            ):
                publisher.publish(DEVICE_TASKS.build(device="dev-1"), encode(program(request, steps, with_image)))
            deadline = time.monotonic() + 20
            while len(ran) < 5:
                assert time.monotonic() < deadline, ran
                time.sleep(0.01)
        finally:
            other.stop()
            publisher.stop()
    assert ran == [("B", 0), ("A", 0), ("B", 1), ("C", 0), ("C", 1)]


def test_a_device_that_joins_is_used_from_the_next_plan(store: ModelStore, references: References) -> None:
    ref = references[("smallcnn", 96, 96)]
    x = ref.x
    with memory_cluster(store, devices=2, strategy="modnn") as small, small.client() as own:
        assert set(own.infer(x, "smallcnn", timeout=60).devices) == {"dev-1", "dev-2"}
        small.add_device("dev-3")
        small.wait_for_table({"dev-1", "dev-2", "dev-3"})
        result = own.infer(x, "smallcnn", timeout=60)
        assert set(result.devices) == {"dev-1", "dev-2", "dev-3"} and faithful(
            result.logits, ref.logits32, ref.logits64
        )
        small.stops["dev-3"].set()  # a clean stop announces the device offline
        small.wait_for_table({"dev-1", "dev-2"})
        assert set(own.infer(x, "smallcnn", timeout=60).devices) == {"dev-1", "dev-2"}


def test_hostile_payloads_on_every_subscribed_topic_change_nothing(
    cluster: MemoryCluster,
    client: EdgeCIClient,
    references: References,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = [DEVICE_TASKS.build(device=d) for d in cluster.agents] + [
        DEVICE_PROBE.build(device="dev-1"),
        DEVICE_STATE.build(device="dev-9"),
        DEVICE_STATE.build(device="dev-1"),
        AUCTION_CALL.build(round="hostile"),
        AUCTION_BIDS.build(round="hostile", device="dev-1"),
        INFER_REQUESTS.build(client="attacker"),
    ]
    not_in_flight = RESULTS.build(orchestrator="o1", device="dev-1", request="hostile")
    attacker = cluster.broker.bus("attacker")
    attacker.start()
    payloads = hostile_payloads()
    dropped = cluster.orchestrator.mail.dropped
    with caplog.at_level(logging.WARNING):
        for topic in topics:
            for payload in payloads:
                attacker.publish_frame(topic, payload, response_topic=WILDCARD_RESPONSE_TOPIC)
        for payload in payloads:  # results for no request in flight: dropped unread, silently
            attacker.publish_frame(not_in_flight, payload)
        # dropped unread: the bids for a round never opened and the results (and the devices'
        # refusals of hostile tasks); the log is read once the count has stopped growing
        seen, deadline = -1, time.monotonic() + 20  # the dispatcher works through the backlog
        while seen != (seen := cluster.orchestrator.mail.dropped) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cluster.orchestrator.mail.dropped - dropped >= 2 * len(payloads)
        assert not_in_flight not in caplog.text
        assert sorted(cluster.alive()) == sorted([*cluster.agents, "o1"])
        assert set(cluster.orchestrator.table.online()) == set(cluster.agents)
        ref = references[("smallcnn", 64, 64)]

        x = ref.x
        for strategy in ("edgeci", "deepthings"):
            assert faithful(client.infer(x, "smallcnn", strategy, timeout=60).logits, ref.logits32, ref.logits64)
    text = caplog.text
    for complaint in (*DEVICE_COMPLAINTS, *ORCHESTRATOR_COMPLAINTS):
        assert complaint in text, complaint
    assert "Traceback" not in text


def test_an_answer_goes_only_to_the_client_who_asked(
    cluster: MemoryCluster, references: References, caplog: pytest.LogCaptureFixture
) -> None:
    """A request on alice's topic that asks for the answer on bob's is refused: an answer
    (bob's to see, or a flood of them) can only go to the requester, whom the topic names."""
    ref = references[("smallcnn", 64, 64)]
    bob = cluster.broker.bus("bob")
    bob.subscribe(CLIENT_RESPONSES.build(client="bob"))
    bob.start()
    alice = cluster.broker.bus("alice")
    alice.start()
    request = encode(RequestMessage("r-forged", "smallcnn", ref.x.numpy()))
    with caplog.at_level(logging.WARNING):
        alice.publish(
            INFER_REQUESTS.build(client="alice"), request, response_topic=CLIENT_RESPONSES.build(client="bob")
        )
        answered = [e for e in events_until(bob, deadline=time.perf_counter() + 1.0) if isinstance(e, Inbound)]
    bob.stop()
    alice.stop()
    assert answered == [] and "must be answered on edgeci/v1/clients/alice/responses" in caplog.text
    with cluster.client("alice") as own:  # its own response topic: served
        assert faithful(own.infer(ref.x, "smallcnn", timeout=60).logits, ref.logits32, ref.logits64)


def test_errors_reach_the_client(client: EdgeCIClient) -> None:
    with pytest.raises(InferenceError, match="not held here"):
        client.infer(torch.zeros(1, 3, 64, 64), "alexnet", timeout=30)
    with pytest.raises(InferenceError, match="takes 3 input channels"):
        client.infer(torch.zeros(1, 4, 64, 64), "smallcnn", timeout=30)
    with pytest.raises(InferenceError, match="too small"):
        client.infer(torch.zeros(1, 3, 8, 8), "vgg16", timeout=30)
    with pytest.raises(InferenceError, match="unknown strategy"):
        client.infer(torch.zeros(1, 3, 64, 64), "smallcnn", "teleport", timeout=30)


@pytest.mark.parametrize(
    ("image", "complaint"),
    [
        (np.full((1, 3, 64, 64), np.nan, np.float32), "NaN or infinite"),
        (np.full((1, 3, 64, 64), np.inf, np.float32), "NaN or infinite"),
        (np.zeros((1, 3, 64, 64), np.float64), "float64"),
        (np.full((1, 3, 64, 64), 255.0, np.float32), "not normalised"),
    ],
)
def test_the_orchestrator_refuses_what_a_careless_client_sends(
    client: EdgeCIClient, monkeypatch: pytest.MonkeyPatch, image: np.ndarray, complaint: str
) -> None:
    """A client that skips its own check (anyone's code can publish a request) gets a clear
    error from the orchestrator, not NaN scores or a silently cast image."""
    monkeypatch.setattr("edgeci_mqtt.client.check_image", lambda *_: None)
    with pytest.raises(InferenceError, match=complaint):
        client.infer(torch.from_numpy(image), "smallcnn", timeout=30)


def test_the_client_refuses_bad_images_before_sending(client: EdgeCIClient) -> None:
    for image, complaint in (
        (torch.full((1, 3, 64, 64), float("nan")), "NaN or infinite"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.float64), "float64"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "uint8"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.complex64), "complex64"),
    ):
        started = time.perf_counter()
        with pytest.raises(InputError, match=complaint):
            client.infer(image, "smallcnn", timeout=30)
        assert time.perf_counter() - started < 1.0  # refused here, not waited out


def test_the_device_table_follows_births_and_wills() -> None:
    table = DeviceTable()
    digest = weights_digest("smallcnn", None, 0)
    born = DeviceStateMessage("dev-1", True, profile=flat_profile(), link=Link(100.0, 1.0), models={"smallcnn": digest})
    table.update(born)
    assert table.online() == ["dev-1"] and table.generation == 1 and table.births == 1
    table.update(
        DeviceStateMessage("dev-1", False, profile=flat_profile(), link=Link(100.0, 1.0))
    )  # offline, profile or not
    assert table.online() == [] and table.generation == 2
    table.update(born)
    assert table.online() == ["dev-1"] and table.generation == 3 and table.births == 2
    with pytest.raises(WireError, match="without a profile"):
        table.update(DeviceStateMessage("dev-2", True))


@pytest.mark.parametrize(
    "strategy",
    [
        "flow:barrier+raw+orchestrator-tail",
        "flow:raw+orchestrator-tail+sequential+unbanded",
        "flow:raw+orchestrator-tail",
        "flow:orchestrator-tail",
    ],
)
def test_every_step_of_the_flow_ablation_gives_the_models_result(
    client: EdgeCIClient, references: References, strategy: str
) -> None:
    """The ablation's variants run the same code with a switch off: a barrier (go messages),
    raw rows, the tail on the orchestrator."""
    for model, size in (("smallcnn", 64), ("vgg16", 96)):
        ref = references[(model, size, size)]
        result = client.infer(ref.x, model, strategy, timeout=120)
        assert_float32_faithful(result.logits, ref.logits32, ref.logits64, f"{model} {strategy}")
        assert result.strategy == strategy


def test_a_traced_flow_request_shows_every_devices_steps(client: EdgeCIClient, references: References) -> None:
    """Under ``flow`` the devices report when they ran each item: the timeline shows every
    used device's block steps (tiles named), within the request's time."""
    ref = references[("vgg16", 96, 96)]
    result = client.infer(ref.x, "vgg16", "flow", timeout=120, trace=True)
    assert faithful(result.logits, ref.logits32, ref.logits64)
    computes = [i for i in result.timeline if i.kind == "compute"]
    assert {i.resource for i in computes} == set(result.devices)
    assert all(i.block is not None and i.region is not None for i in computes)
    assert all(0.0 <= i.start <= i.end <= result.latency_s for i in result.timeline)
    orchestrator = {i.kind for i in result.timeline if i.resource == ORCHESTRATOR}
    assert {"plan", "auction", "prepare", "tail"} <= orchestrator


def test_devices_behind_a_shared_medium_announce_it_and_bid_their_share(
    store: ModelStore, references: References
) -> None:
    """Two devices configured behind one medium announce it with their measured links; every
    auction call tells the devices how many of them share it, and the answer stays exact."""
    ref = references[("smallcnn", 160, 160)]  # big enough that ``flow`` splits it
    wifi = Medium("wifi", 20.0)
    with memory_cluster(store, devices=1, strategy="flow") as small, small.client() as own:
        for name in ("dev-2", "dev-3"):
            small.add_device(name, medium=wifi)
        small.wait_for_table({"dev-1", "dev-2", "dev-3"})
        digest = weights_digest("smallcnn", None, 0)
        media = {v.name: v.link.medium for v in small.orchestrator.table.views("smallcnn", digest)}
        assert media == {"dev-1": None, "dev-2": wifi, "dev-3": wifi}
        spy = small.broker.bus("spy")
        spy.subscribe(AUCTION_CALL.filter)
        spy.start()
        result = own.infer(ref.x, "smallcnn", "edgeci", timeout=60)  # auctioned on every request
        calls = []
        while not spy.events.empty():
            event = spy.events.get_nowait()
            if isinstance(event, Inbound) and isinstance(message := decode(event.payload), CallMessage):
                calls.append(message)
        spy.stop()
        assert faithful(result.logits, ref.logits32, ref.logits64)
        assert calls and all(call.sharing == {"wifi": 2} for call in calls)


def test_a_device_prices_its_share_of_a_medium_as_the_call_says(store: ModelStore) -> None:
    bidder = Bidder("dev-1", store, flat_profile(DEVICE_GFLOPS))
    bidder.link = Link(100.0, 1.0, Medium("wifi", 20.0))
    lot = AuctionLot(FusedBlock(0, 2), (Span(0, 8), Span(8, 16)))
    prices = []
    for sharing in ({}, {"wifi": 1}, {"other": 4}, {"wifi": 4}):
        bid = bidder.bid(CallMessage("r1", "o1", "smallcnn", (64, 64), (lot,), 1.0, False, sharing))
        assert bid is not None
        prices.append(bid.lots[0].alone_s)
    assert prices[0] == prices[1] == prices[2]  # alone, or the only one behind it: the medium's whole rate
    assert all(s > a for s, a in zip(prices[3], prices[0], strict=True))  # a quarter of it: dearer


def test_overlapped_flow_steps_run_interior_first_and_stay_exact(client: EdgeCIClient, references: References) -> None:
    """Through the real roles: programs whose blocks come in several steps (the interior
    first, then the edges that wait for halos) give the model's answer."""
    ref = references[("vgg16", 160, 160)]
    result = client.infer(ref.x, "vgg16", "flow:raw+orchestrator-tail", timeout=120, trace=True)
    assert_float32_faithful(result.logits, ref.logits32, ref.logits64, "overlapped flow")
    computes = [i for i in result.timeline if i.kind == "compute" and i.block is not None]
    by_device_block: dict[tuple[str, FusedBlock], int] = {}
    for interval in computes:
        key = (interval.resource, interval.block)
        by_device_block[key] = by_device_block.get(key, 0) + 1
    assert any(count > 1 for count in by_device_block.values()), by_device_block  # some block was cut
    assert result.timings["recovered_tasks"] == 0
