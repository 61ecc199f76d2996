"""Auction rounds on the bus, and the plan of one attempt awarded from them (the auctioneer's edge).

One call out, bids in, awards announced: every gather block (``edgeci``) and every
``flow`` request holds its rounds here; what to award from the bids is the planner's pure
business (:func:`edgeci_mqtt.planner.awas.award`, :func:`edgeci_mqtt.planner.flow.flow_blocks`).
The plan cache chose the blocks (DPFL, from predicted costs) once per device-table
generation; each attempt awards them from the devices' real bids, once (AWAS):

* ``flow`` holds every block's round at once, the bids priced with the output kept on
  the device, and awards the blocks in order with what each device holds after the block
  before, the tail placed with them (:func:`flow_plan`).
* The gathering strategies' blocks on devices are auctioned (``edgeci`` always; the others
  when a restart must share out the work of a device that failed), every round at once,
  each block's rows awarded from its bids (no bid, no work: :func:`gather_plan`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeci_mqtt.errors import InferenceError, PlanningError
from edgeci_mqtt.planner.awas import Award, Bid, auction_items, award, award_tasks, make_bid
from edgeci_mqtt.planner.environment import DeviceView, Environment, media_sharing
from edgeci_mqtt.planner.flow import flow_blocks
from edgeci_mqtt.planner.overlap import overlapped
from edgeci_mqtt.planner.plan import BlockPlan, Plan
from edgeci_mqtt.planner.tail import TailWork, placement_making_seconds
from edgeci_mqtt.wire import AUCTION_AWARD, AUCTION_CALL, AuctionLot, AwardMessage, AwardRun, BidMessage, CallMessage

if TYPE_CHECKING:
    from edgeci_mqtt.orchestrator.run import Run

__all__ = ["COOL_S", "MAX_COOL_S", "Round", "Silence", "flow_plan", "gather_plan"]

log = logging.getLogger("edgeci.orchestrator")

COOL_S, MAX_COOL_S = 30.0, 600.0
"""After missing a round, a device is not waited for in rounds for this long, even once it bids again."""


@dataclass(frozen=True)
class Round:
    """One lot of a round: the round's id, the lot's index in its call, the bids counted (by device)."""

    id: str
    lot: int
    bids: dict[str, Bid]

    def ordered(self) -> tuple[Bid, ...]:
        """The bids by device: what an award depends on, whatever order they came in (a cache key)."""
        return tuple(sorted(self.bids.values(), key=lambda b: b.device))


class Silence:
    """Devices that did not bid in a round they were awaited in, until they bid again.

    A device whose retained state says online but that does not run (or no longer hears
    calls) would otherwise make every round wait out its whole window. A silent device
    is still called and its bids still count if they come before a round closes; nobody
    waits for it, and ``flow`` does not price work for it from its profile, until it bids
    again (a late bid for a closed round says it is back). A device that missed a round is
    not waited for during ``cool_s`` after, twice as long for each round it missed again
    right after its cool-off: one that bids late on a timer (or stalls now and then) cannot
    hold every round open, one window per cool-off at most. Shared by every request of an
    orchestrator.
    """

    def __init__(self, cool_s: float = COOL_S, max_cool_s: float = MAX_COOL_S) -> None:
        self.cool_s, self.max_cool_s = cool_s, max_cool_s
        self._silent: set[str] = set()
        self._cool: dict[str, tuple[float, float]] = {}  # device -> (not waited for until, that cool-off's length)
        self._lock = threading.Lock()

    def __contains__(self, device: object) -> bool:
        with self._lock:
            return device in self._silent

    def unreliable(self, now: float) -> set[str]:
        """Devices no round waits for: silent, or in the cool-off after a miss."""
        with self._lock:
            return self._silent | {d for d, (until, _) in self._cool.items() if now < until}

    def missed(self, devices: set[str], now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        with self._lock:
            new = devices - self._silent
            self._silent |= devices
            for device in devices:
                until, length = self._cool.get(device, (0.0, 0.0))
                again = length > 0 and now < until + length  # missed right after its last cool-off
                length = min(self.max_cool_s, 2 * length) if again else self.cool_s
                self._cool[device] = (now + length, length)
        for device in sorted(new):
            log.warning("device %s did not bid in time: not waited for until it bids again", device)

    def heard(self, device: str) -> None:
        """``device`` bid (in time or not): it answers again, and gets work again."""
        with self._lock:
            if device not in self._silent:
                return
            self._silent.discard(device)
        log.info("device %s bids again", device)


def _rounds(run: Run, lots: Sequence[AuctionLot], views: list[DeviceView], flow: bool) -> list[Round]:
    """Every lot in one call, to every device of ``views``; one round per lot back (the
    dispatcher drops bids in ``run.mail.bids`` by round id).

    The call waits, until the window closes, for the bids of the candidates the plan
    expects to win work (its devices; all of them if it expects none) but not of the
    silent ones; bids that others have sent by then count as well. An awaited device
    that has not bid by then is silent. Waiting for a device the plan leaves idle would
    cost every inference its slowest bidder's reply time for a bid that almost never
    wins (docs/RUNTIME.md, one inference).
    """
    candidates, silence, window_s = {v.name for v in views}, run.mail.silence, run.services.auction_s
    if not candidates:
        raise PlanningError("no capable device remains for this inference")
    awaited = (set(run.plan.devices) & candidates) or candidates
    awaited = (awaited - silence.unreliable(time.perf_counter())) or awaited  # all silent: them or nobody
    round_id = uuid.uuid4().hex[:12]
    box: queue.Queue[BidMessage] = queue.Queue()
    received: list[dict[str, Bid]] = [{} for _ in lots]
    counts = [len(lot.items) for lot in lots]
    deadline = time.perf_counter() + window_s
    model, sharing = run.held.chain.model_name, media_sharing(views)
    call = CallMessage(round_id, run.orchestrator, model, run.input_hw, tuple(lots), window_s, flow, sharing)
    run.mail.bids[round_id] = box
    try:
        run.services.publish(AUCTION_CALL.build(round=round_id), call)
        answered: set[str] = set()
        while awaited - answered and (remaining := deadline - time.perf_counter()) > 0:
            try:
                message = box.get(timeout=remaining)
            except queue.Empty:
                break
            answered |= _take_bid(message, counts, candidates, received)
        for _ in range(box.qsize()):  # what others sent by now counts too; wait for nothing more
            answered |= _take_bid(box.get_nowait(), counts, candidates, received)
        silence.missed(awaited - answered)
    finally:
        run.mail.bids.pop(round_id, None)
    return [Round(round_id, lot, bids) for lot, bids in enumerate(received)]


def _announce(run: Run, held: Round, won: Award) -> None:
    """Publish who won what (watchers see it)."""
    runs = tuple(AwardRun(d, s) for d, s in won.runs)
    run.services.publish(AUCTION_AWARD.build(round=held.id), AwardMessage(held.id, held.lot, runs))


def _take_bid(message: BidMessage, counts: list[int], candidates: set[str], into: list[dict[str, Bid]]) -> set[str]:
    """Count a bid (its prices are finite and in range: the wire checked) if it prices every
    item of every lot and comes from a candidate; the device, if counted."""
    shapes = [(len(p.alone_s), len(p.extend_s)) for p in message.lots]
    if shapes != [(c, c) for c in counts]:  # counts: from our own call, short
        log.warning(
            "bid from %s prices %s items where the call has %s: ignored", message.device, shapes[:8], counts[:8]
        )
        return set()
    if message.device not in candidates:
        return set()
    for bids, prices in zip(into, message.lots, strict=True):
        bids[message.device] = Bid(message.device, message.queue_s, prices.alone_s, prices.extend_s)
    return {message.device}


# Remembered: an award depends on the bids (and the cluster) only, and idle devices bid the
# same for every request.
_award = functools.lru_cache(maxsize=256)(award)
_flow_blocks = functools.lru_cache(maxsize=64)(flow_blocks)


def flow_plan(run: Run, views: list[DeviceView]) -> Plan:
    """Every block's round at once, then the flow awards in block order."""
    started, plan = time.perf_counter(), run.plan
    lots = [AuctionLot(b.block, auction_items(run.shapes[b.block.stop])) for b in plan.blocks]
    rounds = _rounds(run, lots, views, flow=True)
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
    if place:  # the next request keeps it unless another is clearly cheaper (not one the orchestrator ran)
        run.services.tails[run.held.digest] = tail
    if plan.overlap or plan.bands:
        blocks = overlapped(chain, costs, env, blocks, halo=plan.overlap, bands=plan.bands)
    for held_round, won in zip(rounds, awards, strict=True):
        _announce(run, held_round, won)
    run.spent("auction", started, f"{len(lots)} rounds")
    # the plan's prediction, and the tail weights its devices must make
    work = TailWork.of_split(chain.tail_work) if place else None
    making = placement_making_seconds(env, work, tail) if work is not None else 0.0
    predicted_s = plan.predicted_s + making
    return dataclasses.replace(plan, blocks=tuple(blocks), predicted_s=predicted_s, auctioned=True, tail=tail)


def gather_plan(run: Run, views: list[DeviceView], start: int, auction: bool) -> Plan:
    """The plan's blocks from boundary ``start`` that run on devices, auctioned among
    ``views`` if ``auction`` (one round each, held at once), the others as planned."""
    plan, blocks = run.plan, list(run.plan.blocks)
    static = [
        k
        for k, b in enumerate(blocks)
        if b.block.start >= start and b.placement == "devices" and b.dispatch == "static"
    ]
    if not auction or not static:
        return plan
    started = time.perf_counter()
    lots = [AuctionLot(blocks[k].block, auction_items(run.shapes[blocks[k].block.stop])) for k in static]
    rounds = _rounds(run, lots, views, flow=False)
    for k, lot, held_round in zip(static, lots, rounds, strict=True):
        won = _award(held_round.ordered(), len(lot.items))
        _announce(run, held_round, won)
        blocks[k] = BlockPlan(lot.block, award_tasks(run.held.chain.stages, run.shapes, lot.block, lot.items, won))
    answered = min(len(r.bids) for r in rounds)
    run.spent("auction", started, f"{len(rounds)} rounds, >= {answered} bids")
    return dataclasses.replace(plan, blocks=tuple(blocks))
