"""How an orchestrator serves requests: the plans it keeps, and the work it has handed out.

Planning is the costly part of serving a request on a small orchestrator, so a plan (and
what it takes from each device, :func:`~edgeci_mqtt.planner.serving.price_shares`) is kept
for the device table's generation, by model, input size, strategy and the devices planned
for; a few device sets at once (:data:`PLANS_KEPT`): while a device is on probation, the
request holding its trial plans with it and the others without it. Each request is split
as planned or served whole on one device, whichever finishes first given the work handed
out (:func:`~edgeci_mqtt.planner.serving.choose_serving`), counted until it is done. A
split's tail stays on the devices the plan gave it only while it is measured to pay
(:class:`~edgeci_mqtt.planner.measured_tail.MeasuredTail`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.device_table import DeviceTable
from edgeci_mqtt.planner.environment import DeviceView, Environment
from edgeci_mqtt.planner.measured_tail import MeasuredTail
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.planner.serving import Serving, choose_serving, price_shares, whole_request_plan
from edgeci_mqtt.planner.strategies import PlanningContext, context_for, whole_model_plan, whole_model_seconds
from edgeci_mqtt.planner.strategy import Strategy
from edgeci_mqtt.sim.choice import plan_for

__all__ = ["PLANS_KEPT", "Commitments", "PlanCache"]

log = logging.getLogger("edgeci.orchestrator")

PLANS_KEPT = 16
"""Plans cached at once (by model, input size, strategy and the devices planned for)."""

D = TypeVar("D")
_Planned = tuple[int, Plan, dict[str, float], dict[str, float]]
_Key = tuple[str, int, int, Strategy, frozenset[str]]


class Commitments:
    """Predicted seconds of work handed to each device and not yet finished (thread-safe)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._deciding = threading.Lock()

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)

    @contextmanager
    def claiming(self, decide: Callable[[dict[str, float]], tuple[D, Mapping[str, float]]]) -> Iterator[D]:
        """Decide from the work handed out so far and count the work decided on, as one step,
        until the block ends. Requests that arrive together are decided one after another,
        each seeing the others' work: apart, a burst of four saw an idle cluster four times,
        split all four requests and ran each at a quarter of the speed its deadline assumed.
        ``decide`` gets the snapshot and returns its decision and the work it hands out."""
        with self._deciding:
            decision, work = decide(self.snapshot())
            self._add(work, 1.0)
        try:
            yield decision
        finally:
            self._add(work, -1.0)

    def _add(self, work: Mapping[str, float], sign: float) -> None:
        with self._lock:
            for device, seconds in work.items():
                left = self._seconds.get(device, 0.0) + sign * seconds
                if left > 1e-9:
                    self._seconds[device] = left
                else:
                    self._seconds.pop(device, None)


class PlanCache:
    """Plans for the orchestrator's requests, and the work they hand out (thread-safe: its
    request workers share it). ``profile`` and ``broker_link``: the orchestrator's own, which
    price its merges, gateway blocks and the tail."""

    def __init__(self, models: ModelStore, table: DeviceTable, profile: DeviceProfile, broker_link: Link) -> None:
        self.models, self.table, self.profile, self.broker_link = models, table, profile, broker_link
        self.load = Commitments()
        # by (model, height, width, strategy, devices): the table's generation, the plan, its shares
        self._plans: OrderedDict[_Key, _Planned] = OrderedDict()
        self._tails: OrderedDict[_Key, MeasuredTail] = OrderedDict()  # not by generation: a table change keeps them
        self._lock = threading.Lock()

    def _context(self, model: str, height: int, width: int, devices: list[DeviceView]) -> PlanningContext:
        """A planning context for these devices (with the held model's row costs, which
        remember each device profile's stage prices)."""
        held = self.models.get(model)
        env = Environment(tuple(devices), self.profile, self.broker_link)
        return context_for(held.spec(height, width), env, costs=held.row_model(height, width))

    @contextmanager
    def serving(
        self, model: str, height: int, width: int, strategy: Strategy, devices: list[DeviceView]
    ) -> Iterator[tuple[Plan, Serving]]:
        """The plan for these devices (planned anew whenever the device table changed) and how
        to serve the request with it, its work counted as handed out until the block ends."""
        ctx = self._context(model, height, width, devices)
        key = (model, height, width, strategy, frozenset(v.name for v in devices))
        generation = self.table.generation
        with self._lock:
            planned = self._plans.get(key)
            if planned is None or planned[0] != generation:
                plan = plan_for(strategy, ctx)  # flow: the best of its candidates (docs/PLANNER.md)
                shares = price_shares(plan, ctx.costs, devices)
                # whole requests priced with the same profiles as the plan: a device's corrected
                # speed changes neither until the table does, so the two always compare alike
                planned = self._plans[key] = (generation, plan, shares, whole_model_seconds(ctx))
            self._plans.move_to_end(key)
            measured = self._tails.setdefault(key, MeasuredTail())
            self._tails.move_to_end(key)
            for kept in (self._plans, self._tails):
                while len(kept) > PLANS_KEPT:
                    kept.popitem(last=False)
        _, plan, shares, whole_s = planned

        def decide(outstanding: dict[str, float]) -> tuple[Serving, Mapping[str, float]]:
            serving = choose_serving(plan, ctx, shares, outstanding, strategy, whole_s)
            return serving, serving.work

        with self.load.claiming(decide) as serving:
            if serving.whole is not None or not plan.strategy.places_tail or plan.tail.on_orchestrator:
                yield plan, serving
                return
            with self._lock:
                on_devices = measured.next_on_devices()
            if not on_devices:  # served as flow:orchestrator-tail, its one difference
                options = dataclasses.replace(plan.strategy.options, place_tail=False)
                plan = dataclasses.replace(plan, strategy=dataclasses.replace(plan.strategy, options=options))
            started = time.perf_counter()
            yield plan, serving
            with self._lock:
                if measured.record(on_devices, time.perf_counter() - started):
                    where = "devices" if measured.prefers_devices() else "orchestrator"
                    log.info("%s %s: the tail runs on the %s from now (%s)", model, strategy, where, measured)

    def whole(self, model: str, height: int, width: int, serving: Serving) -> Callable[[list[DeviceView]], Plan] | None:
        """For a request served whole, its plan on the devices left (None for one served split):
        on the device chosen, for the seconds it was chosen for (priced once, when chosen), or
        once that device is gone, on the one that finishes first given the work handed out."""
        whole = serving.whole
        if whole is None:
            return None
        seconds = serving.work[whole.device]

        def plan(devices: list[DeviceView]) -> Plan:
            ctx = self._context(model, height, width, devices)
            if any(v.name == whole.device for v in devices):
                return whole_model_plan(ctx, whole.strategy, whole.device, seconds, whole.steps)
            return whole_request_plan(ctx, whole, self.load.snapshot())

        return plan
