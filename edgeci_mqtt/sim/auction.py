"""The replay of an auctioned plan's rounds (EdgeCI), before any task moves.

An auctioned plan first holds every block's round at once, as the runtime does: a call
to every device, each device prices the rounds, its bids come back, and once the bids of
the devices the plan gives work to are in, the orchestrator awards every round; then the
first block starts. Pricing one round costs a device :data:`AUCTION_ROUND_OPS` per-op
overheads, and awarding one costs the orchestrator :data:`AWARD_OPS_PER_BID` per bid:
counted in per-op overheads, both follow each CPU's speed (set from measured rounds:
docs/PLANNER.md, simulator).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from edgeci_mqtt.planner.awas import auction_item_count
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.sim.state import State
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval

__all__ = ["AUCTION_ROUND_OPS", "AWARD_OPS_PER_BID", "auction"]

AUCTION_ROUND_OPS = 25
AWARD_OPS_PER_BID = 15
_CALL_BYTES, _BID_BYTES_PER_ITEM = 200, 20  # a call lists items; a bid prices each twice


def auction(state: State, plan: Plan, then: Callable[[float], None], start: float = 0.0) -> None:
    """Every block's round at once from ``start`` (see the module docstring); ``then(t)``
    starts the first block.

    Event-driven like the blocks, so a far device's late bid holds its links when it
    travels, not from time zero."""
    lots = [b for b in plan.blocks if b.placement != "orchestrator"]
    if not lots:
        state.at(start, lambda: then(start))
        return
    items = sum(auction_item_count(max(t.out_region.rows.stop for t in b.tasks)) for b in lots)
    env = state.env
    names = {v.name for v in env.devices}
    waiting = (set(plan.devices) & names) or names

    def arrived(device: str, t: float) -> None:
        if device not in waiting:
            return
        waiting.discard(device)
        if not waiting:
            state.timeline.append(Interval(ORCHESTRATOR, "auction", start, t, note="waiting for bids"))
            seconds = len(lots) * AWARD_OPS_PER_BID * len(env.devices) * env.orchestrator.op_overhead_s
            end = state.busy(ORCHESTRATOR, "auction", t, seconds, note="award")
            state.at(end, lambda: then(end))

    def priced(device: str, t: float) -> None:
        arrival = state.transfer(device, t, items * _BID_BYTES_PER_ITEM, False, note="bids")
        state.at(arrival, partial(arrived, device, arrival))

    def called(device: str, t: float) -> None:
        seconds = len(lots) * AUCTION_ROUND_OPS * env.device(device).profile.op_overhead_s
        end = state.busy(device, "auction", t, seconds, note="bids")
        state.at(end, partial(priced, device, end))

    for view in env.devices:
        calls = state.transfer(view.name, start, len(lots) * _CALL_BYTES, True, note="auction calls")
        state.at(calls, partial(called, view.name, calls))
