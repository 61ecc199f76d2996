"""What a device asks for work: its prices, its backlog, and its speed as its work shows it.

Bids are answered at once from the message thread, so prices come from a cache (a lot's
prices depend on the profile, not on the queue) and the backlog is the sum of what is
booked: each program's steps are booked on arrival and leave one by one as they run, each
with the seconds it was booked with (a speed corrected in between must not leave crumbs
that make every bid differ and the orchestrator award every request afresh).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.device.programs import ValidProgram, geometry
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.planner.awas import make_bid
from edgeci_mqtt.planner.calibration import SpeedCalibration
from edgeci_mqtt.planner.costs import TaskWork
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.wire import AuctionLot, BidMessage, CallMessage, LotPrices, ProgramStep

__all__ = ["ASSUMED_LINK", "PRICED_LOTS", "Bidder"]

log = logging.getLogger("edgeci.device")

PRICED_LOTS = 1024
"""Auction lots whose prices a device remembers (a request asks for one per block)."""
ASSUMED_LINK = Link(100.0, 1.0)
"""The link a device assumes until it has measured its own, or when the broker does not answer its probe."""


class Bidder:
    """A device's prices, backlog and announced speed (thread-safe); ``calibrate``: correct the
    announced profile by the time our work really takes (:mod:`edgeci_mqtt.planner.calibration`)."""

    def __init__(self, device: str, models: ModelStore, profile: DeviceProfile, calibrate: bool = False) -> None:
        self.device, self.models = device, models
        self.boot_profile = profile  # what the boot micro-benchmarks measured; ``profile`` is what we announce
        self.calibration = SpeedCalibration() if calibrate else None
        self.link = ASSUMED_LINK
        self._pricing = (0, profile)  # (version, profile), swapped whole: the version keys the prices
        self._prices: dict[tuple[object, ...], LotPrices] = {}
        self._booked: dict[str, dict[int, float]] = {}  # request -> predicted seconds of each step not run
        self._lock = threading.Lock()

    @property
    def profile(self) -> DeviceProfile:
        """The speed we announce: the boot profile, corrected by our work when calibrating."""
        return self._pricing[1]

    def book(self, program: ValidProgram) -> None:
        """A program's steps, by index, with the seconds we predict for each on the profile we announce."""
        costs, profile = program.held.row_model(*program.message.input_hw), self.profile
        steps: dict[int, float] = {}
        for i, step in enumerate(program.message.steps):
            rows = step.out_region.rows
            steps[i] = costs.compute_seconds(profile, step.block, np.array([rows.start]), np.array([rows.stop])).item()
        with self._lock:
            self._booked[program.message.request] = steps

    def unbook(self, request: str, step: int | None = None) -> None:
        """Take a request's work (one step, or all that is left) out of the backlog."""
        with self._lock:
            left = self._booked.pop(request, {})
            if step is not None:
                left.pop(step, None)
                if left:
                    self._booked[request] = left

    def learn(self, program: ValidProgram, step: ProgramStep, measured_s: float) -> bool:
        """Compare a step's compute time with the boot profile's price of its exact ops (the
        ops the kernels ran, as the simulator prices them: the full-width strips bids are
        priced with overstate a tile's edges and a grid's tiles); True when the running ratio
        has moved and the corrected profile is to be announced."""
        if self.calibration is None:
            return False
        work = TaskWork(program.held.chain.stages, program.shapes)(step.block, step.out_region)
        factor = self.calibration.observe(self.boot_profile.work_seconds(work), measured_s)
        if factor is None:
            return False
        self._pricing = (self._pricing[0] + 1, self.boot_profile.scaled(1.0 / factor))
        log.info("%s: work takes %.2fx the boot profile's time; announcing the corrected profile", self.device, factor)
        return True

    def bid(self, call: CallMessage) -> BidMessage | None:
        """One bid for every lot of the call (None for a model we do not hold); a call we
        cannot price whole is a :class:`WireError`."""
        if call.model not in self.models.held:
            return None
        where = f"auction {call.round}"
        if not call.lots:
            raise WireError(f"{where}: no lots")
        shapes = geometry(self.models.get(call.model), call.input_hw, (lot.block for lot in call.lots), where)
        for lot in call.lots:  # every lot checked before any is priced
            out_height = shapes[lot.block.stop].height
            if not lot.items:
                raise WireError(f"{where}: block {lot.block} has no items")
            if outside := [item for item in lot.items if item.stop > out_height]:
                raise WireError(f"{where}: item {outside[0]} is outside the {out_height} output rows")
        version, profile = self._pricing  # one profile for the whole bid, whatever the worker announces meanwhile
        prices = tuple(self._lot_prices(call, lot, profile, version) for lot in call.lots)
        with self._lock:  # to 0.1 ms: equal bids let the orchestrator reuse its awards
            backlog = round(sum(s for steps in self._booked.values() for s in steps.values()), 4)
        return BidMessage(call.round, self.device, backlog, prices)

    def _lot_prices(self, call: CallMessage, lot: AuctionLot, profile: DeviceProfile, version: int) -> LotPrices:
        """Our prices for one lot, computed once per lot and profile (they do not depend on the queue)."""
        medium = self.link.medium
        sharing = call.sharing.get(medium.name, 1) if medium else 1  # its share of the medium, as the plans price it
        key = (version, call.model, call.input_hw, lot.block, lot.items, call.flow, sharing)
        prices = self._prices.get(key)
        if prices is None:
            costs = self.models.get(call.model).row_model(*call.input_hw)
            view = DeviceView(self.device, profile, self.link, sharing=sharing)
            bid = make_bid(view, costs, lot.block, list(lot.items), call.flow)
            prices = self._prices[key] = LotPrices(bid.alone_s, bid.extend_s)
            if len(self._prices) > PRICED_LOTS:
                self._prices.pop(next(iter(self._prices)))
        return prices
