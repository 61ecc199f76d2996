"""Admission: per-client bounded queues served in turn; busy, deadline and no-orchestrator
answers come at once (in-process, over the memory bus)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import pytest
import torch

from edgeci_mqtt.bus.memory import MemoryBroker
from edgeci_mqtt.bus.protocol import Inbound
from edgeci_mqtt.client import EdgeCIClient
from edgeci_mqtt.errors import InferenceError
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.mailboxes import FairQueue
from edgeci_mqtt.wire import DEVICE_TASKS, ProgramMessage, decode
from tests.cluster import wait_for
from tests.exactness import References, assert_float32_faithful
from tests.inprocess import memory_cluster

pytestmark = pytest.mark.pure


def test_clients_are_served_in_turn_and_each_queue_is_bounded() -> None:
    fair: FairQueue[str] = FairQueue(per_client=3)
    assert [fair.put("flood", f"f{i}") for i in range(4)] == [0, 1, 2, None]  # the fourth: busy
    assert fair.put("honest", "h0") == 0
    assert fair.put("other", "o0") == 0
    # the flood's first, then each other client's before the flood's second
    assert [fair.get() for _ in range(5)] == ["f0", "h0", "o0", "f1", "f2"]
    assert fair.waiting() == 0
    assert fair.put("flood", "f5") == 0  # room again
    assert fair.get() == "f5"
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(fair.get()))
    worker.start()
    # A negative check: with nothing queued, get() waits. 0.2 s is no proof it would wait
    # forever, but a get() that returned at once (None, or anything) shows here.
    worker.join(timeout=0.2)
    assert worker.is_alive() and got == []
    fair.close()  # wakes the waiting worker
    worker.join(timeout=10)
    assert not worker.is_alive() and got == [None]


def test_with_no_orchestrator_online_a_request_fails_at_once() -> None:
    broker = MemoryBroker()
    started = time.perf_counter()
    with EdgeCIClient(broker.bus("lonely")) as client, pytest.raises(InferenceError, match="no orchestrator"):
        client.infer(torch.zeros(1, 3, 32, 32), "smallcnn", timeout=60)
    assert time.perf_counter() - started < 10  # not the 60 s timeout


def test_one_client_flooding_gets_busy_answers_and_cannot_starve_another(references: References) -> None:
    """One client floods an orchestrator serving one request at a time with at most 2
    waiting per client: its surplus is refused as busy at once, and another client's single
    request is served before the flood's last waiting one. (The device is frozen while the
    queues fill, so the first request holds the worker for its auction window.)"""
    ref = references[("smallcnn", 64, 64)]
    store = ModelStore(dict.fromkeys(["smallcnn"]), seed=0)
    with memory_cluster(store, devices=1, in_flight=1, per_client=2, auction_s=1.0) as small:
        outcomes: list[str] = []
        finished: dict[str, float] = {}
        with small.client("flood") as flood, small.client("honest") as honest:

            def flood_one(index: int) -> None:
                try:
                    flood.infer(ref.x, "smallcnn", timeout=60)
                    finished[f"flood-{index}"] = time.perf_counter()
                    outcomes.append("served")
                except InferenceError as exc:
                    outcomes.append("busy" if "busy" in str(exc) else "other")

            small.muted.add(small.bus_of("dev-1").client_id)
            threads = [threading.Thread(target=flood_one, args=(i,)) for i in range(8)]
            threads[0].start()
            # the first holds the worker: it called its auction, and the frozen device's bid was lost
            wait_for(lambda: small.bids_dropped("dev-1") > 0, what="the frozen device's bid dropped")
            for thread in threads[1:]:
                thread.start()
            wait_for(lambda: outcomes.count("busy") == 5, what="five busy answers")  # so two wait
            asked = time.perf_counter()
            answer: list[float] = []
            asking = threading.Thread(
                target=lambda: answer.append(honest.infer(ref.x, "smallcnn", timeout=60).latency_s)
            )
            asking.start()
            small.muted.clear()  # the first is lost already; the others wait for the worker
            asking.join()
            finished["honest"] = asked + answer[0]
            for thread in threads:
                thread.join()
        # the first found no bid (frozen device), two were served, five were refused at once
        assert sorted(outcomes) == ["busy"] * 5 + ["other"] + ["served"] * 2, outcomes
        last_flood = max(t for name, t in finished.items() if name.startswith("flood"))
        assert finished["honest"] < last_flood  # served in turn, not after the whole flood


def test_a_request_past_its_deadline_is_dropped_unstarted(
    references: References, caplog: pytest.LogCaptureFixture
) -> None:
    ref = references[("smallcnn", 64, 64)]
    store = ModelStore(dict.fromkeys(["smallcnn"]), seed=0)
    with memory_cluster(store, devices=1, in_flight=1, auction_s=3.0) as small, small.client() as client:
        small.muted.add(small.bus_of("dev-1").client_id)  # the one device is frozen: the worker waits for its bid

        def blocked() -> None:
            with contextlib.suppress(InferenceError):  # whatever becomes of it: it holds the worker
                client.infer(ref.x, "smallcnn", timeout=8)

        blocker = threading.Thread(target=blocked)
        blocker.start()
        wait_for(lambda: small.bids_dropped("dev-1") > 0, what="the frozen device's bid dropped")  # worker held
        with caplog.at_level(logging.WARNING), pytest.raises(InferenceError, match="no answer"):
            client.infer(ref.x, "smallcnn", timeout=0.5)  # queued behind the blocked one, gives up
        small.muted.clear()
        blocker.join()
        wait_for(lambda: "past its 0.5 s deadline: dropped" in caplog.text, 20, "the late request dropped")


@pytest.mark.parametrize("strategy", ["flow", "edgeci"])
def test_a_request_whose_client_gave_up_is_stopped_mid_run_and_its_rows_released(
    strategy: str, references: References, caplog: pytest.LogCaptureFixture
) -> None:
    """The devices' results never leave them, so the run would wait out its 30 s
    allowance; the client's 1 s deadline stops it instead: the devices are told to drop
    the request's rows, and the only worker is free for the next request (served within
    its 15 s, which a worker waiting out the 30 s could not do). The deadline went to the
    devices with the programs, as the seconds left then."""
    ref = references[("smallcnn", 64, 64)]
    store = ModelStore(dict.fromkeys(["smallcnn"]), seed=0)
    cluster = memory_cluster(store, devices=2, strategy=strategy, in_flight=1, min_allowance_s=30.0)
    with cluster as small, small.client() as client:
        frozen = {small.bus_of(name).client_id for name in small.agents}

        def results_held(who: str, access: str, topic: str) -> bool:  # they bid and work; nothing comes back
            return access == "read" or not (who in frozen and "/results/" in topic)

        small.broker.acl = results_held
        spy = small.broker.bus("spy")  # sees every program as its device does
        spy.subscribe(DEVICE_TASKS.filter)
        spy.start()
        with caplog.at_level(logging.WARNING), pytest.raises(InferenceError):
            client.infer(ref.x, "smallcnn", timeout=1.0)
        events = [spy.events.get_nowait() for _ in range(spy.events.qsize())]  # delivered as to the devices
        programs = [decode(e.payload) for e in events if isinstance(e, Inbound)]
        deadlines = [m.deadline_s for m in programs if isinstance(m, ProgramMessage)]
        assert deadlines and all(0 < d <= 1.0 for d in deadlines), deadlines
        wait_for(lambda: "deadline passed; stopped unfinished" in caplog.text, 10, "the run stopped")
        # every strategy's programs and rows are released on the devices, not left to expire:
        wait_for(lambda: not any(a.store.requests() for a in small.agents.values()), 10, "the rows released")
        small.broker.acl = None
        result = client.infer(ref.x, "smallcnn", timeout=15)
        assert_float32_faithful(result.logits, ref.logits32, ref.logits64, "served after the abandoned one")
