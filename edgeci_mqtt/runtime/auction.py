"""Auction rounds on the bus: one call out, bids in, awards announced (the auctioneer's edge).

Every gather block (``edgeci``) and every ``flow`` request holds its rounds here; what
to award from the bids is the planner's pure business (:func:`edgeci_mqtt.planner.awas.award`,
:func:`edgeci_mqtt.planner.flow.flow_blocks`).
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.planner.awas import Award as Won
from edgeci_mqtt.planner.awas import Bid
from edgeci_mqtt.wire import AUCTION_AWARD, AUCTION_CALL, AuctionCall, AuctionLot, Award, AwardRun, BidMessage, encode

__all__ = ["Auctioneer", "Round"]

log = logging.getLogger("edgeci.orchestrator")


@dataclass(frozen=True)
class Round:
    """One lot of a round: the round's id, the lot's index in its call, the bids counted (by device)."""

    id: str
    lot: int
    bids: dict[str, Bid]

    def ordered(self) -> tuple[Bid, ...]:
        """The bids by device: what an award depends on, whatever order they came in (a cache key)."""
        return tuple(sorted(self.bids.values(), key=lambda b: b.device))


class Auctioneer:
    """Holds rounds for one model and input size; ``bid_boxes`` is where the dispatcher drops
    bids by round id."""

    def __init__(
        self,
        orchestrator: str,
        model: str,
        input_hw: tuple[int, int],
        publish: Callable[[str, bytes], None],
        bid_boxes: dict[str, queue.Queue[BidMessage]],
        window_s: float,
    ) -> None:
        self.orchestrator, self.model, self.input_hw = orchestrator, model, input_hw
        self.publish, self.bid_boxes, self.window_s = publish, bid_boxes, window_s

    def rounds(
        self, lots: list[tuple[FusedBlock, list[Span]]], candidates: set[str], awaited: set[str], flow: bool = False
    ) -> list[Round]:
        """Every lot (a block and its items) in one call, to every candidate; one round per lot back.

        The call waits, until the window closes, for the bids of ``awaited`` (the devices
        the plan expects to win work); bids that others have sent by then count as well.
        Waiting for a device the plan leaves idle would cost every inference its slowest
        bidder's reply time (on hetero8, a 2 % CPU device answers 100+ ms after the rest)
        for a bid that almost never wins.
        """
        if not candidates:
            raise PlanningError("no capable device remains for this inference")
        round_id = uuid.uuid4().hex[:12]
        box: queue.Queue[BidMessage] = queue.Queue()
        received: list[dict[str, Bid]] = [{} for _ in lots]
        counts = [len(items) for _, items in lots]
        deadline = time.perf_counter() + self.window_s
        self.bid_boxes[round_id] = box
        try:
            call = AuctionCall(
                round_id,
                self.orchestrator,
                self.model,
                self.input_hw,
                tuple(AuctionLot(block, tuple(items)) for block, items in lots),
                self.window_s * 1e3,
                flow,
            )
            self.publish(AUCTION_CALL.build(round=round_id), encode(call))
            answered: set[str] = set()
            while awaited - answered and (remaining := deadline - time.perf_counter()) > 0:
                try:
                    message = box.get(timeout=remaining)
                except queue.Empty:
                    break
                answered |= _take_bid(message, counts, candidates, received)
            for _ in range(box.qsize()):  # what others sent by now counts too; wait for nothing more
                _take_bid(box.get_nowait(), counts, candidates, received)
        finally:
            self.bid_boxes.pop(round_id, None)
        return [Round(round_id, lot, bids) for lot, bids in enumerate(received)]

    def announce(self, held: Round, won: Won) -> None:
        """Publish who won what (watchers see it)."""
        runs = tuple(AwardRun(d, s) for d, s in won.runs)
        self.publish(AUCTION_AWARD.build(round=held.id), encode(Award(held.id, held.lot, runs)))


def _take_bid(message: BidMessage, counts: list[int], candidates: set[str], into: list[dict[str, Bid]]) -> set[str]:
    """Count a bid (its prices are finite and in range: the wire checked) if it prices every
    item of every lot; the device, if counted."""
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
