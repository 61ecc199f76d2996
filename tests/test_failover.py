"""Failover with real processes: an orchestrator or the broker dies while requests run."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeci_mqtt.client import EdgeCIClient
from edgeci_mqtt.errors import InferenceError
from edgeci_mqtt.exactness import faithful
from edgeci_mqtt.wire import INFER_REQUESTS
from tests.cluster import local_cluster, on_traffic
from tests.exactness import References

pytestmark = pytest.mark.broker


def _ask_many(client: EdgeCIClient, x: object, count: int, timeout: float) -> list[tuple[object, float]]:
    """``count`` requests at once from one client: each result (or error) and its latency."""
    outcomes: list[tuple[object, float]] = []
    lock = threading.Lock()

    def ask() -> None:
        started = time.perf_counter()
        try:
            outcome: object = client.infer(x, "smallcnn", timeout=timeout)  # type: ignore[arg-type]
        except InferenceError as exc:
            outcome = exc
        with lock:
            outcomes.append((outcome, time.perf_counter() - started))

    threads = [threading.Thread(target=ask) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def _all_sent(count: int, then: Callable[[], object]) -> list[tuple[str, Callable[[], object]]]:
    """Steps for :func:`on_traffic`: ``then`` once the broker has carried ``count`` requests."""
    return [(INFER_REQUESTS.filter, lambda: None)] * (count - 1) + [(INFER_REQUESTS.filter, then)]


def test_requests_of_an_orchestrator_killed_mid_way_are_answered_by_another(
    tmp_path: Path, references: References
) -> None:
    """o1 freezes, requests are shared between o1 and o2, then o1 is SIGKILLed: its will
    reaches the client, which asks again; every answer is exact and comes from o2, long
    before the client's timeout."""
    ref = references[("smallcnn", 64, 64)]
    with local_cluster(tmp_path, devices=2, models="smallcnn", orchestrators=2) as cluster:
        victim = cluster.group.processes["o1"]
        with EdgeCIClient(cluster.broker.address("client")) as client:
            client.infer(ref.x, "smallcnn", timeout=60)  # warm
            victim.send_signal(signal.SIGSTOP)
            with on_traffic(cluster.broker, _all_sent(6, victim.kill)) as done:
                outcomes = _ask_many(client, ref.x, 6, timeout=60)
            assert len(done) == 6, "o1 was killed once all six requests were out (its share waiting for it)"
        log = "".join(cluster.group.log_text(name) for name in cluster.group.processes)
    for outcome, latency in outcomes:
        assert not isinstance(outcome, Exception), outcome
        assert faithful(outcome.logits, ref.logits32, ref.logits64)  # type: ignore[attr-defined]
        assert outcome.orchestrator == "o2" and latency < 15, (outcome, latency)  # type: ignore[attr-defined]
    assert "Traceback" not in log


def test_requests_in_flight_when_the_broker_dies_fail_at_once(tmp_path: Path, references: References) -> None:
    """The orchestrator is frozen so the requests cannot finish; the broker is SIGKILLed:
    every request fails with a clear error within seconds, none waits out its timeout."""
    ref = references[("smallcnn", 64, 64)]
    with local_cluster(tmp_path, devices=2, models="smallcnn") as cluster:
        with EdgeCIClient(cluster.broker.address("client")) as client:
            client.infer(ref.x, "smallcnn", timeout=60)  # warm
            frozen = cluster.group.processes["o1"]
            frozen.send_signal(signal.SIGSTOP)
            with on_traffic(cluster.broker, _all_sent(3, cluster.broker.process.kill)) as done:
                outcomes = _ask_many(client, ref.x, 3, timeout=60)
            assert len(done) == 3, "the broker was killed once all three requests were out"
        frozen.send_signal(signal.SIGCONT)
    for outcome, latency in outcomes:
        assert isinstance(outcome, InferenceError) and "lost the broker" in str(outcome), outcome
        assert latency < 10, latency
