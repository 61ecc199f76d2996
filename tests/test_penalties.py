"""Devices that fail requests: held out with a decaying penalty, back on probation, and
blamed only for what they held up; auctions that a device bidding late cannot hold open."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.device.programs import ReadyStep, ValidProgram, run_step
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.auction import Silence
from edgeci_mqtt.orchestrator.penalties import Penalties
from edgeci_mqtt.orchestrator.programs import Compiled, DeviceProgram, Forward, blame
from edgeci_mqtt.orchestrator.service import Orchestrator
from edgeci_mqtt.wire import PackedArray, ProgramStep, ProgressMessage, RowsMessage, StepInput, StepSend, TailRole
from tests.exactness import faithful
from tests.inprocess import memory_cluster
from tests.planning import flat_profile

pytestmark = pytest.mark.pure

REGION = TileRegion.of(0, 4, 0, 4)


def test_a_failed_device_is_held_out_then_tried_once_at_a_time() -> None:
    penalties = Penalties(first_hold_s=5.0)
    penalties.failed({"dev-1"}, now=100.0)
    assert penalties.excluded(104.0) == {"dev-1"}
    assert penalties.take_trials(104.0) == frozenset()  # still held
    trial = penalties.take_trials(105.0)
    assert trial == {"dev-1"}
    assert penalties.excluded(105.0) == {"dev-1"}  # for every other request
    assert penalties.excluded(105.0, trial) == set()  # but not the one on trial
    assert penalties.take_trials(105.0) == frozenset()  # one trial at a time
    penalties.settle(trial, used=(), failed=(), now=106.0)  # not used: free for the next request
    again = penalties.take_trials(106.0)
    assert again == {"dev-1"}
    penalties.settle(again, used={"dev-1"}, failed=(), now=107.0)  # used, and it worked
    assert penalties.penalised() == set() and penalties.excluded(107.0) == set()


def test_each_failure_in_a_row_doubles_the_hold() -> None:
    penalties = Penalties(first_hold_s=5.0, max_hold_s=12.0)
    penalties.failed({"dev-1"}, now=0.0)
    trial = penalties.take_trials(5.0)
    penalties.failed(trial, now=6.0)  # failed its trial
    penalties.settle(trial, used=trial, failed=trial, now=6.5)
    assert penalties.excluded(15.9) == {"dev-1"}  # 10 s from its second failure
    assert penalties.take_trials(16.0) == {"dev-1"}
    penalties.failed({"dev-1"}, now=16.0)
    assert penalties.excluded(27.9) == {"dev-1"} and penalties.excluded(28.0) == set()  # capped at 12 s


def test_a_device_that_missed_a_round_is_not_waited_for_during_a_growing_cool_off() -> None:
    """A device that bids late on a timer cannot hold every round open: once it missed a
    round, it is not waited for during 30 s, then 60 s if it misses again right after."""
    silence = Silence(cool_s=30.0)
    silence.missed({"ghost"}, now=0.0)
    assert "ghost" in silence and silence.unreliable(1.0) == {"ghost"}
    silence.heard("ghost")  # a bid, late or not: it gets work again
    assert "ghost" not in silence
    assert silence.unreliable(29.0) == {"ghost"}  # its bids count, nobody waits for them
    assert silence.unreliable(31.0) == set()
    silence.missed({"ghost"}, now=40.0)  # awaited again, and late again
    silence.heard("ghost")
    assert silence.unreliable(99.0) == {"ghost"} and silence.unreliable(100.0) == set()
    silence.missed({"ghost"}, now=1000.0)  # long after: back to the first cool-off
    silence.heard("ghost")
    assert silence.unreliable(1029.0) == {"ghost"} and silence.unreliable(1031.0) == set()


def step(block: int, *sources: str, out: str = "") -> ProgramStep:
    sends = (StepSend(REGION, out),) if out else ()
    return ProgramStep(FusedBlock(block, block + 1), REGION, tuple(StepInput(REGION, s) for s in sources), sends)


def test_blame_falls_on_who_held_the_attempt_up() -> None:
    """dev-1 runs block 0 from the image and sends to dev-2, which sends to dev-3 (tail)."""
    programs = {
        "dev-1": DeviceProgram((step(0, "o1", out="dev-2"),)),
        "dev-2": DeviceProgram((step(1, "dev-1", out="dev-3"),)),
        "dev-3": DeviceProgram((), TailRole((StepInput(REGION, "dev-2"),), "o1")),
    }
    work = Compiled(start=0, final=2, programs=programs, carried={"dev-1": Forward(0, REGION, "dev-1")})

    def blamed(reports: dict[str, ProgressMessage]) -> set[str]:
        return blame(work, {d: (p.item, p.waiting_for) for d, p in reports.items()}, "o1")

    waiting = {
        "dev-2": ProgressMessage("r", "dev-2", 0, ("dev-1",)),
        "dev-3": ProgressMessage("r", "dev-3", 0, ("dev-2",)),
    }
    # dev-1 never answered (stopped, or a ghost): only it
    assert blamed(waiting) == {"dev-1"}
    # dev-1 answered that it had everything and had not finished: slow (or never computing)
    slow = {**waiting, "dev-1": ProgressMessage("r", "dev-1", 0, ())}
    assert blamed(slow) == {"dev-1"}
    # dev-1 says it waited for the image (it came in its program): not to be believed
    lying = {**waiting, "dev-1": ProgressMessage("r", "dev-1", 0, ("o1",))}
    assert blamed(lying) == {"dev-1"}
    # dev-1 says it finished and sent; dev-2 says it waits for it: one of them is wrong
    done = {**waiting, "dev-1": ProgressMessage("r", "dev-1", 1, ())}
    assert blamed(done) == {"dev-1", "dev-2"}
    # every device finished: the lateness was not theirs
    finished = {d: ProgressMessage("r", d, 1, ()) for d in ("dev-1", "dev-2", "dev-3")}
    assert blamed(finished) == set()
    # its program never arrived
    lost = {**waiting, "dev-1": ProgressMessage("r", "dev-1", -1, ())}
    assert blamed(lost) == {"dev-1"}


def test_a_flow_store_says_how_far_a_request_got() -> None:
    from edgeci_mqtt.core.geometry import FeatureShape
    from edgeci_mqtt.device.store import FlowStore
    from edgeci_mqtt.wire import ProgramMessage

    store: FlowStore[None] = FlowStore("dev-2")
    program = ProgramMessage(
        request="r",
        orchestrator="o1",
        model="smallcnn",
        digest="ab",
        input_hw=(8, 8),
        steps=(step(1, "dev-1"),),
        expires_s=30.0,
    )
    assert store.progress("r") == (-1, ())
    store.install(program, [FeatureShape(1, 4, 4)] * 3, None, time.perf_counter())
    assert store.progress("r") == (0, ("dev-1",))
    rows = RowsMessage("r", "dev-1", 1, REGION, PackedArray(np.zeros((1, 1, 4, 4), np.float32)))
    assert store.add_rows(rows, "dev-1", time.perf_counter())
    assert store.next_step("r", time.perf_counter()) is not None
    assert store.progress("r") == (0, ())  # taken and running: it has its input, it is not done
    store.release("r", "released: late")
    assert store.progress("r") is None  # released: the orchestrator knows


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore({"smallcnn": None}, seed=0)


def test_a_device_that_bids_and_never_computes_costs_one_request(store: ModelStore, references: dict) -> None:
    """A device whose worker does nothing (it still bids, from its message thread) wins work
    under ``flow``: that request re-plans without it, and the requests after it neither
    use it nor wait for it."""
    ref = references[("smallcnn", 160, 160)]  # big enough that ``flow`` splits it
    never = threading.Event()  # set when the test is over: the stalled worker may end

    def stalled(ready: ReadyStep[ValidProgram]) -> np.ndarray:
        never.wait()
        return run_step(ready)

    try:
        with memory_cluster(store, devices=3, strategy="flow", min_allowance_s=1.0) as small, small.client() as own:
            assert "dev-3" in own.infer(ref.x, "smallcnn", timeout=60).devices  # the plan counts on it
            small.agents["dev-3"].worker.compute = stalled  # it takes its steps and never finishes one
            faulty = own.infer(ref.x, "smallcnn", timeout=60)
            assert faithful(faulty.logits, ref.logits32, ref.logits64)
            assert faulty.timings["recovered_tasks"] >= 1
            assert "dev-3" in small.orchestrator.penalties.penalised()
            assert not small.orchestrator.penalties.penalised() - {"dev-3"}  # those that waited for it are not blamed
            for _ in range(3):
                later = own.infer(ref.x, "smallcnn", timeout=60)
                assert faithful(later.logits, ref.logits32, ref.logits64)
                assert "dev-3" not in later.devices and later.timings["recovered_tasks"] == 0
                assert later.timings["auction_s"] < 0.25, later.timings  # nobody waits for it either

    finally:
        never.set()


def test_a_frozen_device_is_not_handed_the_next_whole_requests(store: ModelStore, references: dict) -> None:
    """``replicas`` runs each request whole on one device. The one it picks stops answering
    (connected, silent): one request pays its deadline; the next go elsewhere at once."""
    ref = references[("smallcnn", 64, 64)]
    with memory_cluster(store, devices=3, strategy="replicas", min_allowance_s=1.0) as small, small.client() as own:
        (chosen,) = own.infer(ref.x, "smallcnn", timeout=60).devices
        small.muted.add(small.bus_of(chosen).client_id)
        faulty = own.infer(ref.x, "smallcnn", timeout=60)
        assert faithful(faulty.logits, ref.logits32, ref.logits64) and faulty.timings["recovered_tasks"] >= 1
        for _ in range(3):
            later = own.infer(ref.x, "smallcnn", timeout=60)
            assert chosen not in later.devices and later.timings["recovered_tasks"] == 0
        small.muted.clear()


def test_orchestrators_hold_out_what_another_held_out(store: ModelStore) -> None:
    """A failure at one orchestrator is announced; another sharing the requests holds the
    device out as long, without counting the failure again."""
    announced: list[tuple[str, float, int, str]] = []
    here = Penalties(announce=lambda *penalty: announced.append(penalty))
    here.failed({"dev-1"}, now=0.0, why="late")
    assert announced == [("dev-1", 5.0, 1, "late")]
    there = Penalties()
    there.heard("dev-1", 5.0, 1, now=10.0)
    assert there.excluded(14.0) == {"dev-1"} and there.excluded(15.0) == set()
    there.heard("dev-1", 1.0, 1, now=11.0)  # a shorter hold does not shorten ours
    assert there.excluded(14.0) == {"dev-1"}
    with memory_cluster(store, devices=2) as small:
        o2 = Orchestrator("o2", small.broker.bus("edgeci-orchestrator-o2"), store, flat_profile())
        small.start("o2", o2)
        deadline = time.monotonic() + 10
        with small.client("watcher-of-o2") as client:  # o2 announces itself once subscribed
            while "o2" not in client.orchestrators:
                assert time.monotonic() < deadline, "o2 never came online"
                time.sleep(0.01)
        small.orchestrator.penalties.failed({"dev-2"}, time.perf_counter(), "late")
        while "dev-2" not in o2.penalties.excluded(time.perf_counter()):
            assert time.monotonic() < deadline, "o2 never heard"
            time.sleep(0.01)
        assert "dev-2" not in small.orchestrator.penalties.excluded(time.perf_counter() + 60)  # not doubled
