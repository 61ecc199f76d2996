"""The plan of one attempt: real auctions among the devices left (AWAS), as each strategy holds them.

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

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.chain import ChainSpec
from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.errors import InferenceError, PlanningError
from edgeci_mqtt.planner.awas import Award, Bid, auction_items, award, award_tasks, make_bid
from edgeci_mqtt.planner.costs import RowModel
from edgeci_mqtt.planner.environment import DeviceView, Environment
from edgeci_mqtt.planner.flow import flow_blocks
from edgeci_mqtt.planner.plan import BlockPlan, Plan
from edgeci_mqtt.planner.tail import TailPlan, TailWork, placement_making_seconds

if TYPE_CHECKING:
    from edgeci_mqtt.orchestrator.run import Run

__all__ = ["flow_plan", "gather_plan"]

log = logging.getLogger("edgeci.orchestrator")


@functools.lru_cache(maxsize=256)
def _award(bids: tuple[Bid, ...], count: int) -> Award:
    """:func:`award`, remembered: it depends on the bids only, and idle devices bid the same
    for every request."""
    return award(bids, count)


@functools.lru_cache(maxsize=64)
def _awarded(
    chain: ChainSpec,
    costs: RowModel,
    env: Environment,
    lots: tuple[tuple[FusedBlock, tuple[Span, ...], tuple[Bid, ...]], ...],
    place: bool,
    keep: TailPlan | None,
) -> tuple[tuple[BlockPlan, ...], tuple[Award, ...], TailPlan]:
    """:func:`flow_blocks`, remembered: the awards depend on the bids and the cluster only,
    and idle devices bid the same for every request."""
    blocks, awards, tail, _ = flow_blocks(chain, costs, env, lots, place, keep)
    return tuple(blocks), tuple(awards), tail


def flow_plan(run: Run, views: list[DeviceView]) -> Plan:
    """Every block's round at once, then the flow awards in block order."""
    started = time.perf_counter()
    plan = run.plan
    lots = [(b.block, list(auction_items(run.shapes[b.block.stop]))) for b in plan.blocks]
    candidates = {v.name for v in views}
    awaited = (set(plan.devices) & candidates) or candidates
    rounds = run.auctioneer.rounds(lots, candidates, awaited, flow=True)
    views = [v for v in views if v.name not in run.mail.silence] or views  # found silent now: no tail either
    env = Environment(tuple(views), run.services.profile, run.services.broker_link)
    chain = run.held.spec(*run.input_hw)
    costs = run.held.row_model(*run.input_hw)
    for (block, items), held_round in zip(lots, rounds, strict=True):
        if not held_round.bids:  # nobody answered in time (all busy): price from what they announced
            log.warning("%s: no bid for block %s in time; pricing it from the devices' profiles", run.request, block)
            held_round.bids.update({v.name: make_bid(v, costs, block, items, flow=True) for v in views})
    bids = tuple((block, tuple(items), r.ordered()) for (block, items), r in zip(lots, rounds, strict=True))
    place = plan.strategy.places_tail
    try:
        blocks, awards, tail = _awarded(chain, costs, env, bids, place, run.services.tails.get(run.held.digest))
    except PlanningError as exc:
        raise InferenceError(f"flow cannot be awarded: {exc}") from exc
    run.services.tails[run.held.digest] = tail  # the next request keeps it unless another is clearly cheaper
    for held_round, won in zip(rounds, awards, strict=True):
        run.auctioneer.announce(held_round, won)
    run.spent("auction", started, f"{len(lots)} rounds")
    making = placement_making_seconds(env, TailWork.of(chain.tail_work), tail) if place else 0.0
    # the plan's prediction, and the tail weights its devices must make
    return dataclasses.replace(plan, blocks=blocks, predicted_s=plan.predicted_s + making, auctioned=True, tail=tail)


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
    items = {k: list(auction_items(run.shapes[plan.blocks[k].block.stop])) for k in static}
    candidates = {v.name for v in views}
    awaited = (set(plan.devices) & candidates) or candidates
    rounds = run.auctioneer.rounds([(plan.blocks[k].block, items[k]) for k in static], candidates, awaited)
    blocks = list(plan.blocks)
    for k, held_round in zip(static, rounds, strict=True):
        block = plan.blocks[k].block
        won = _award(held_round.ordered(), len(items[k]))
        run.auctioneer.announce(held_round, won)
        blocks[k] = BlockPlan(block, award_tasks(run.held.chain.stages, run.shapes, block, items[k], won))
    answered = min(len(r.bids) for r in rounds)
    run.spent("auction", started, f"{len(rounds)} rounds, >= {answered} bids")
    return dataclasses.replace(plan, blocks=tuple(blocks))
