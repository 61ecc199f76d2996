"""The plan of one attempt: real auctions among the devices left (AWAS), as each strategy holds them.

The plan cache chose the blocks (DPFL, from predicted costs) once per device-table
generation; here each attempt awards them from the devices' real bids, once.

* ``flow`` holds every block's round at once, the bids priced with the output kept on
  the device, and awards the blocks in order with what each device holds after the block
  before (:func:`~edgeci_mqtt.planner.flow.flow_blocks`), the tail placed with them.
* The gathering strategies' blocks on devices are auctioned (``edgeci`` always; the others
  when a restart must share out the work of a device that failed), every round at once,
  each block's rows awarded from its bids (no bid, no work).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import TYPE_CHECKING

from edgeci_mqtt.errors import InferenceError, PlanningError
from edgeci_mqtt.planner.awas import auction_items, award, award_tasks, make_bid
from edgeci_mqtt.planner.environment import DeviceView, Environment
from edgeci_mqtt.planner.flow import flow_blocks
from edgeci_mqtt.planner.plan import BlockPlan, Plan
from edgeci_mqtt.planner.tail import TailWork, placement_making_seconds
from edgeci_mqtt.wire import AuctionLot

if TYPE_CHECKING:
    from edgeci_mqtt.orchestrator.run import Run

__all__ = ["flow_plan", "gather_plan"]

log = logging.getLogger("edgeci.orchestrator")

# Remembered: an award depends on the bids (and the cluster) only, and idle devices bid the
# same for every request.
_award = functools.lru_cache(maxsize=256)(award)
_flow_blocks = functools.lru_cache(maxsize=64)(flow_blocks)


def flow_plan(run: Run, views: list[DeviceView]) -> Plan:
    """Every block's round at once, then the flow awards in block order."""
    started, plan = time.perf_counter(), run.plan
    lots = [AuctionLot(b.block, auction_items(run.shapes[b.block.stop])) for b in plan.blocks]
    rounds = run.auctioneer.rounds(lots, {v.name for v in views}, set(plan.devices), flow=True)
    views = [v for v in views if v.name not in run.mail.silence] or views  # found silent now: no tail either
    env = Environment(tuple(views), run.services.profile, run.services.broker_link)
    chain, costs = run.held.spec(*run.input_hw), run.held.row_model(*run.input_hw)
    for lot, held_round in zip(lots, rounds, strict=True):
        if not held_round.bids:  # nobody answered in time (all busy): price from what they announced
            log.warning(
                "%s: no bid for block %s in time; pricing it from the devices' profiles", run.request, lot.block
            )
            held_round.bids.update({v.name: make_bid(v, costs, lot.block, lot.items, flow=True) for v in views})
    bids = tuple((lot.block, lot.items, r.ordered()) for lot, r in zip(lots, rounds, strict=True))
    place, kept = plan.strategy.places_tail, run.services.tails.get(run.held.digest)
    try:
        blocks, awards, tail, _ = _flow_blocks(chain, costs, env, bids, place, kept)
    except PlanningError as exc:
        raise InferenceError(f"flow cannot be awarded: {exc}") from exc
    run.services.tails[run.held.digest] = tail  # the next request keeps it unless another is clearly cheaper
    for held_round, won in zip(rounds, awards, strict=True):
        run.auctioneer.announce(held_round, won)
    run.spent("auction", started, f"{len(lots)} rounds")
    # the plan's prediction, and the tail weights its devices must make
    making = placement_making_seconds(env, TailWork.of(chain.tail_work), tail) if place else 0.0
    predicted_s = plan.predicted_s + making
    return dataclasses.replace(plan, blocks=tuple(blocks), predicted_s=predicted_s, auctioned=True, tail=tail)


def gather_plan(run: Run, views: list[DeviceView], start: int, auction: bool) -> Plan:
    """The plan's blocks from boundary ``start`` that run on devices, auctioned among
    ``views`` if ``auction`` (one round each, held at once), the others as planned."""
    plan = run.plan
    static = [
        k
        for k, b in enumerate(plan.blocks)
        if b.block.start >= start and b.placement == "devices" and b.dispatch == "static"
    ]
    if not auction or not static:
        return plan
    started = time.perf_counter()
    lots = [AuctionLot(plan.blocks[k].block, auction_items(run.shapes[plan.blocks[k].block.stop])) for k in static]
    rounds = run.auctioneer.rounds(lots, {v.name for v in views}, set(plan.devices))
    blocks = list(plan.blocks)
    for k, lot, held_round in zip(static, lots, rounds, strict=True):
        won = _award(held_round.ordered(), len(lot.items))
        run.auctioneer.announce(held_round, won)
        blocks[k] = BlockPlan(lot.block, award_tasks(run.held.chain.stages, run.shapes, lot.block, lot.items, won))
    answered = min(len(r.bids) for r in rounds)
    run.spent("auction", started, f"{len(rounds)} rounds, >= {answered} bids")
    return dataclasses.replace(plan, blocks=tuple(blocks))
