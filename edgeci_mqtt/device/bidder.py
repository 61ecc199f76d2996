"""What a device asks for work: its prices, its backlog, and its speed as its work shows it.

Bids are answered at once from the message thread, so prices come from a cache (a lot's
prices depend on the profile, not on the queue) and the backlog is a running sum of what
was booked: each program's steps are booked on arrival and leave one by one as they run,
each with the seconds it was booked with (a speed corrected in between must not leave
crumbs that make every bid differ and the orchestrator award every request afresh).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.models.held import HeldModel, ModelStore
from edgeci_mqtt.planner.awas import make_bid
from edgeci_mqtt.planner.calibration import SpeedCalibration
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.wire import AuctionLot, BidMessage, CallMessage, LotPrices

__all__ = ["PRICED_LOTS", "Bidder", "block_geometry"]

log = logging.getLogger("edgeci.device")

PRICED_LOTS = 1024
"""Auction lots whose prices a device remembers (a request asks for one per block)."""


def block_geometry(held: HeldModel, input_hw: tuple[int, int], block: FusedBlock, where: str) -> list[FeatureShape]:
    """The chain's shapes for a message's input size, checked against its block."""
    try:
        shapes = held.shapes(*input_hw)
        block.stages(held.chain.stages)
    except EdgeCIError as exc:
        raise WireError(f"{where}: {exc}") from exc
    return shapes


class Bidder:
    """A device's prices, backlog and announced speed (thread-safe)."""

    def __init__(self, device: str, models: ModelStore, profile: DeviceProfile, calibrate: bool = False) -> None:
        """``calibrate``: correct the announced profile by the time our work really takes
        (:mod:`edgeci_mqtt.planner.calibration`)."""
        self.device, self.models = device, models
        self.boot_profile = profile  # what the boot micro-benchmarks measured; ``profile`` is what we announce
        self.calibration = SpeedCalibration() if calibrate else None
        self.link = Link(100.0, 1.0)
        self._pricing = (0, profile)  # (version, profile), swapped whole: the version keys the prices
        self._prices: dict[tuple[object, ...], LotPrices] = {}
        self._booked: dict[str, dict[int, float]] = {}  # request -> predicted seconds of each step not run
        self._backlog_s = 0.0
        self._lock = threading.Lock()

    @property
    def profile(self) -> DeviceProfile:
        """The speed we announce: the boot profile, corrected by our work when calibrating."""
        return self._pricing[1]

    # ------------------------------------------------------------ backlog
    def book(self, request: str, steps: dict[int, float]) -> None:
        """A program's steps, by index, with their predicted seconds."""
        with self._lock:
            self._booked[request] = steps
            self._backlog_s += sum(steps.values())

    def unbook(self, request: str, step: int | None = None) -> None:
        """Take a request's work (one step, or all that is left) out of the backlog."""
        with self._lock:
            left = self._booked.get(request, {})
            done = sum(left.values()) if step is None else left.pop(step, 0.0)
            if step is None or not left:
                self._booked.pop(request, None)
            self._backlog_s = max(0.0, self._backlog_s - done)

    def booked(self) -> list[str]:
        with self._lock:
            return list(self._booked)

    def view(self) -> DeviceView:
        """Us as a bidder: the backlog to 0.1 ms (what is left of finished work after float
        sums is noise, and equal bids let the orchestrator reuse its awards)."""
        with self._lock:
            backlog = round(self._backlog_s, 4)
        return DeviceView(self.device, self.profile, self.link, backlog)

    # ------------------------------------------------------------ speed
    def seconds(
        self,
        held: HeldModel,
        input_hw: tuple[int, int],
        block: FusedBlock,
        region: TileRegion,
        profile: DeviceProfile | None = None,
    ) -> float:
        """This device's own estimate of computing ``region`` of ``block`` (counted in its bids' queue)."""
        costs = held.row_model(*input_hw)
        a, b = np.array([region.rows.start]), np.array([region.rows.stop])
        return float(costs.compute_seconds(profile or self.profile, block, a, b)[0])

    def learn(
        self, held: HeldModel, input_hw: tuple[int, int], block: FusedBlock, region: TileRegion, measured_s: float
    ) -> bool:
        """Compare a block's compute time with the boot profile's prediction; True when the
        running ratio has moved and the corrected profile is to be announced."""
        if self.calibration is None:
            return False
        predicted = self.seconds(held, input_hw, block, region, self.boot_profile)
        factor = self.calibration.observe(predicted, measured_s)
        if factor is None:
            return False
        self._pricing = (self._pricing[0] + 1, self.boot_profile.scaled(1.0 / factor))
        log.info("%s: work takes %.2fx the boot profile's time; announcing the corrected profile", self.device, factor)
        return True

    # ------------------------------------------------------------ bids
    def bid(self, call: CallMessage) -> BidMessage | None:
        """One bid for every lot of the call (None for a model we do not hold); a call we
        cannot price whole is a :class:`WireError`."""
        if call.model not in self.models.held:
            return None
        if not call.lots:
            raise WireError(f"auction {call.round}: no lots")
        version, profile = self._pricing  # one profile for the whole bid, whatever the worker announces meanwhile
        for lot in call.lots:  # every lot checked before any is priced
            self._check_lot(call, lot)
        prices = tuple(self._lot_prices(call, lot, profile, version) for lot in call.lots)
        return BidMessage(call.round, self.device, self.view().queue_s, prices)

    def _check_lot(self, call: CallMessage, lot: AuctionLot) -> None:
        held = self.models.get(call.model)
        shapes = block_geometry(held, call.input_hw, lot.block, f"auction {call.round}")
        out_height = shapes[lot.block.stop].height
        if not lot.items:
            raise WireError(f"auction {call.round}: block {lot.block} has no items")
        outside = [item for item in lot.items if item.stop > out_height]
        if outside:
            raise WireError(f"auction {call.round}: item {outside[0]} is outside the {out_height} output rows")

    def _lot_prices(self, call: CallMessage, lot: AuctionLot, profile: DeviceProfile, version: int) -> LotPrices:
        """Our prices for one lot, computed once per lot and profile (they do not depend on the queue)."""
        held = self.models.get(call.model)
        key = (version, call.model, call.input_hw, lot.block, lot.items, call.flow)
        prices = self._prices.get(key)
        if prices is None:
            costs = held.row_model(*call.input_hw)
            view = DeviceView(self.device, profile, self.link)
            bid = make_bid(view, costs, lot.block, list(lot.items), call.flow)
            prices = self._prices[key] = LotPrices(bid.alone_s, bid.extend_s)
            if len(self._prices) > PRICED_LOTS:
                self._prices.pop(next(iter(self._prices)))
        return prices
