"""Serving a stream: split or whole, from the work already handed out (pure)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from edgeci_mqtt.runtime.load import Choice, Commitments, choose

pytestmark = pytest.mark.pure


def test_an_idle_cluster_splits_and_a_busy_one_runs_whole_requests() -> None:
    whole = {"a": 1.0, "b": 2.0}
    assert choose(0.4, ["a", "b"], whole, {}) == Choice("split", 0.4)
    # both busy for 0.8 s: split finishes at 1.2; whole on a at 1.8; still split
    assert choose(0.4, ["a", "b"], whole, {"a": 0.8, "b": 0.8}).mode == "split"
    # a busy for 3 s, b idle: split waits for a (3.4), whole on b finishes at 2.0
    assert choose(0.4, ["a", "b"], whole, {"a": 3.0}) == Choice("whole", 2.0, "b")
    # replicas (no split): the device that finishes first, ties by name
    assert choose(None, [], {"a": 1.0, "b": 1.0}, {}) == Choice("whole", 1.0, "a")
    with pytest.raises(ValueError):
        choose(None, [], {}, {})


def test_with_every_device_busy_a_split_must_cost_fewer_device_seconds() -> None:
    whole = {"a": 1.0, "b": 1.0}
    busy = {"a": 0.8, "b": 0.8}
    # finishing first would split (1.3 against 1.8), but the split takes 1.1 device-seconds
    # where a whole request takes 1.0: with everyone busy, that only lengthens the queue
    assert choose(0.5, ["a", "b"], whole, busy, split_cost_s=1.1) == Choice("whole", 1.8, "a")
    assert choose(0.5, ["a", "b"], whole, busy, split_cost_s=0.9) == Choice("split", 1.3)
    # one device idle: not saturated, the earliest finish decides (split 1.3, whole on b 2.0)
    assert choose(0.5, ["a", "b"], {"a": 2.0, "b": 2.0}, {"a": 0.8}, split_cost_s=2.2) == Choice("split", 1.3)


def test_commitments_count_work_until_it_is_done() -> None:
    load = Commitments()

    def handing(work: dict[str, float]) -> Callable[[dict[str, float]], tuple[None, dict[str, float]]]:
        return lambda _: (None, work)

    with load.claiming(handing({"a": 1.0, "b": 0.5})):
        with load.claiming(handing({"a": 2.0})):
            assert load.snapshot() == {"a": 3.0, "b": 0.5}
        assert load.snapshot() == {"a": 1.0, "b": 0.5}
    assert load.snapshot() == {}
    with pytest.raises(RuntimeError), load.claiming(handing({"a": 1.0})):
        raise RuntimeError("a failed request")
    assert load.snapshot() == {}


def test_a_burst_is_decided_one_request_after_another() -> None:
    """Four requests deciding at once each see the work the ones before them claimed, not
    an idle cluster four times (the decision is slowed down to widen any gap)."""
    load = Commitments()
    seen: list[float] = []
    start = threading.Barrier(4)
    release = threading.Event()

    def decide(outstanding: dict[str, float]) -> tuple[None, dict[str, float]]:
        seen.append(outstanding.get("a", 0.0))
        time.sleep(0.02)
        return None, {"a": 1.0}

    def request() -> None:
        start.wait()
        with load.claiming(decide):
            release.wait(timeout=10)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while load.snapshot() != {"a": 4.0} and time.monotonic() < deadline:  # all four claimed
        time.sleep(0.01)
    assert sorted(seen) == [0.0, 1.0, 2.0, 3.0]
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert load.snapshot() == {}
