"""Serving requests: the work handed out, counted until done and decided one request after
another; a request priced once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from edgeci_mqtt.core.link import Link
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator import plans as plans_module
from edgeci_mqtt.orchestrator.device_table import DeviceTable
from edgeci_mqtt.orchestrator.plans import Commitments, PlanCache
from edgeci_mqtt.planner import serving as serving_module
from edgeci_mqtt.planner.serving import whole_request_plan
from edgeci_mqtt.planner.strategies import context_for
from edgeci_mqtt.planner.strategy import Strategy
from tests.cluster import wait_for
from tests.planning import device, environment, flat_profile

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
    wait_for(lambda: load.snapshot() == {"a": 4.0}, 10, "all four requests claiming their work")
    assert sorted(seen) == [0.0, 1.0, 2.0, 3.0]
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert load.snapshot() == {}


def test_a_request_served_whole_is_priced_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning prices a whole request on every device (with the plan's profiles), and the
    decision to serve a request whole takes that price; its plan on the device chosen takes
    it too, as :func:`whole_request_plan` would have computed it again. Only once the device
    is gone is every device left priced, to choose another."""
    store = ModelStore({"smallcnn": None}, seed=0)
    devices = [device(name) for name in ("a", "b", "c")]
    broker = Link(10.0, 0.0)  # every byte crosses it: a split's extra bytes and messages cannot pay
    cache = PlanCache(store, DeviceTable(), flat_profile(), broker)
    priced: list[bool] = []
    price = serving_module.whole_model_seconds
    counted = lambda *a, **k: priced.append(True) or price(*a, **k)  # noqa: E731
    monkeypatch.setattr(serving_module, "whole_model_seconds", counted)
    monkeypatch.setattr(plans_module, "whole_model_seconds", counted)  # priced with the plan, when it is made
    with cache.serving("smallcnn", 64, 64, Strategy("flow"), devices) as (_, serving):
        assert serving.whole is not None  # the case this is: a small image through a slow broker runs whole
        chosen, replan = serving.whole.device, cache.whole("smallcnn", 64, 64, serving)
        assert replan is not None and len(priced) == 1
        plan = replan(devices)
        assert len(priced) == 1 and plan.devices == (chosen,)
        left = [v for v in devices if v.name != chosen]
        assert chosen not in replan(left).devices and len(priced) == 2
    assert cache.load.snapshot() == {}
    ctx = context_for(store.get("smallcnn").spec(64, 64), environment(*devices, broker_mbit=broker.bandwidth_mbit))
    assert plan == whole_request_plan(ctx, serving.whole, {})  # the plan it always was, priced once
