"""Auction rounds on the bus: calls out, bids in, awards announced (the auctioneer's edge).

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
from edgeci_mqtt.wire import AUCTION_AWARD, AUCTION_CALL, AuctionCall, Award, AwardRun, BidMessage, encode

__all__ = ["Auctioneer", "Round"]

log = logging.getLogger("edgeci.orchestrator")


@dataclass(frozen=True)
class Round:
    """One round's id and the bids counted (by device)."""

    id: str
    bids: dict[str, Bid]


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
        """One round per lot (a block and its items), all held at once.

        Every call goes out to every candidate first. Each round then waits, until the
        window closes, for the bids of ``awaited`` (the devices the plan expects to win
        work); bids that others have sent by then count as well. Waiting for a device
        the plan leaves idle would cost every inference its slowest bidder's reply time
        (on hetero8, a 2 % CPU device answers 100+ ms after the rest) for a bid that
        almost never wins.
        """
        if not candidates:
            raise PlanningError("no capable device remains for this inference")
        boxes: list[tuple[str, queue.Queue[BidMessage]]] = []
        received: list[dict[str, Bid]] = [{} for _ in lots]
        deadline = time.perf_counter() + self.window_s
        try:
            for block, items in lots:  # registered one by one: a failed publish leaks no mailbox
                boxes.append(self._call(block, items, flow))
            for (_, box), (_, items), bids in zip(boxes, lots, received, strict=True):
                while awaited - bids.keys() and (remaining := deadline - time.perf_counter()) > 0:
                    try:
                        message = box.get(timeout=remaining)
                    except queue.Empty:
                        break
                    _take_bid(message, len(items), candidates, bids)
                for _ in range(box.qsize()):  # what others sent by now counts too; wait for nothing more
                    _take_bid(box.get_nowait(), len(items), candidates, bids)
        finally:
            for round_id, _ in boxes:
                self.bid_boxes.pop(round_id, None)
        return [Round(round_id, bids) for (round_id, _), bids in zip(boxes, received, strict=True)]

    def announce(self, round_id: str, won: Won) -> None:
        """Publish who won what (devices learn their share; watchers see it)."""
        runs = tuple(AwardRun(d, s) for d, s in won.runs)
        self.publish(AUCTION_AWARD.build(round=round_id), encode(Award(round_id, runs)))

    def _call(self, block: FusedBlock, items: list[Span], flow: bool) -> tuple[str, queue.Queue[BidMessage]]:
        round_id = uuid.uuid4().hex[:12]
        box: queue.Queue[BidMessage] = queue.Queue()
        self.bid_boxes[round_id] = box
        call = AuctionCall(
            round_id, self.orchestrator, self.model, self.input_hw, block, tuple(items), self.window_s * 1e3, flow
        )
        self.publish(AUCTION_CALL.build(round=round_id), encode(call))
        return round_id, box


def _take_bid(message: BidMessage, count: int, candidates: set[str], into: dict[str, Bid]) -> None:
    """Count a bid (its prices are finite and in range: the wire checked) if it prices every item."""
    if len(message.alone_s) != count or len(message.extend_s) != count:
        log.warning(
            "bid from %s has %d/%d prices for %d items: ignored",
            message.device,
            len(message.alone_s),
            len(message.extend_s),
            count,
        )
        return
    if message.device in candidates:
        into[message.device] = Bid(message.device, message.queue_s, message.alone_s, message.extend_s)
