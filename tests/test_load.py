"""The work handed out: counted until done, and decided one request after another."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from edgeci_mqtt.orchestrator.load import Commitments

pytestmark = pytest.mark.pure


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
