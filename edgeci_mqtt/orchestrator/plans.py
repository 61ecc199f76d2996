"""The plans an orchestrator serves requests with, kept until the device table changes.

Planning is the costly part of serving a request on a small orchestrator, so a plan is
kept for the device table's generation, by model, input size, strategy and the devices
planned for. A few device sets are kept (:data:`PLANS_KEPT`): while a device is on
probation, the request holding its trial plans with it and the others without it. What a
plan takes from each device (:func:`~edgeci_mqtt.planner.serving.price_shares`, which
prices every task) is kept with it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.device_table import DeviceTable
from edgeci_mqtt.planner.environment import DeviceView, Environment
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.planner.serving import WholeRequest, price_shares, whole_request_plan
from edgeci_mqtt.planner.strategies import PlanningContext, context_for, make_plan
from edgeci_mqtt.planner.strategy import Strategy

__all__ = ["PLANS_KEPT", "PlanCache"]

PLANS_KEPT = 16
"""Plans cached at once (by model, input size, strategy and the devices planned for)."""


@dataclass
class _Planned:
    """A plan made for the device table's ``generation``, and what it takes from each device."""

    generation: int
    plan: Plan
    shares: dict[str, float] | None = None


class PlanCache:
    """Plans for the orchestrator's requests (thread-safe: its request workers share it).
    ``profile`` and ``broker_link``: the orchestrator's own, which price its merges, gateway
    blocks and the tail; ``outstanding()``: the work handed out to each device now (a request
    served whole is re-planned onto the device that would finish it first)."""

    def __init__(
        self,
        models: ModelStore,
        table: DeviceTable,
        profile: DeviceProfile,
        broker_link: Link,
        outstanding: Callable[[], Mapping[str, float]],
    ) -> None:
        self.models, self.table, self.profile, self.broker_link = models, table, profile, broker_link
        self.outstanding = outstanding
        self._plans: OrderedDict[tuple[str, int, int, Strategy, frozenset[str]], _Planned] = OrderedDict()
        self._lock = threading.Lock()

    def context(self, model: str, height: int, width: int, devices: list[DeviceView]) -> PlanningContext:
        """A planning context for these devices (with the held model's row model, which
        remembers each device profile's stage prices)."""
        held = self.models.get(model)
        env = Environment(tuple(devices), self.profile, self.broker_link)
        return context_for(held.spec(height, width), env, costs=held.row_model(height, width))

    def get(
        self, model: str, height: int, width: int, strategy: Strategy, devices: list[DeviceView]
    ) -> tuple[Plan, PlanningContext, dict[str, float]]:
        """The plan for these devices (planned anew whenever the device table changed), a
        planning context for them, and what the plan takes from each device."""
        ctx = self.context(model, height, width, devices)
        key = (model, height, width, strategy, frozenset(v.name for v in devices))
        generation = self.table.generation
        with self._lock:
            planned = self._plans.get(key)
            if planned is None or planned.generation != generation:
                planned = self._plans[key] = _Planned(generation, make_plan(strategy, ctx))
            self._plans.move_to_end(key)
            while len(self._plans) > PLANS_KEPT:
                self._plans.popitem(last=False)
        if planned.shares is None:
            planned.shares = price_shares(planned.plan, ctx.costs, devices)
        return planned.plan, ctx, planned.shares

    def whole(self, model: str, height: int, width: int, whole: WholeRequest, devices: list[DeviceView]) -> Plan:
        """The plan of a request served whole, for the devices left (after a failure, fewer)."""
        return whole_request_plan(self.context(model, height, width, devices), whole, self.outstanding())
