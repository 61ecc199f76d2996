"""Devices that failed a request, remembered across requests with a decaying penalty.

A device can fail without leaving: frozen (stopped, still connected, its retained state
still "online"), overloaded, or hostile (it bids and never computes); were it left out of
the failed run only, every later request would hand it work and wait out a deadline. A
failure holds it out of every request for a while, the hold doubling with each failure in
a row; when the hold is over the device is on *probation*: one request at a time may use
it (its *trial*). A trial that ends well clears the record; one that fails holds it out
again, twice as long. Orchestrators tell each other (``announce`` here, :meth:`heard`
there), so a failure is paid once, not once per orchestrator sharing the requests.

Pure (every call takes ``now``) and thread-safe: an orchestrator's request workers share one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["FIRST_HOLD_S", "MAX_HOLD_S", "Penalties"]

log = logging.getLogger("edgeci.orchestrator")

FIRST_HOLD_S = 5.0
"""How long a device that failed once gets no work (long enough for the requests right
behind the failure to run at normal latency; short enough that a device that was only
busy is back soon)."""
MAX_HOLD_S = 300.0


@dataclass
class _Record:
    strikes: int
    held_until: float
    trial: bool = False  # a request holds its probation


Announce = Callable[[str, float, int, str], None]
"""``(device, hold_s, strikes, why)``: tell the other orchestrators."""


class Penalties:
    def __init__(
        self, first_hold_s: float = FIRST_HOLD_S, max_hold_s: float = MAX_HOLD_S, announce: Announce | None = None
    ) -> None:
        self.first_hold_s, self.max_hold_s, self.announce = first_hold_s, max_hold_s, announce
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def failed(self, devices: Iterable[str], now: float, why: str = "") -> None:
        """These devices failed a request: held out, twice as long as the last time."""
        held = []
        with self._lock:
            for device in sorted(set(devices)):
                record = self._records.get(device)
                strikes = 1 if record is None else record.strikes + 1
                hold = min(self.max_hold_s, self.first_hold_s * 2 ** (strikes - 1))
                self._records[device] = _Record(strikes, now + hold)
                held.append((device, hold, strikes))
        for device, hold, strikes in held:
            log.warning(
                "device %s failed a request%s: no work for %.0f s, then on probation (failure %d in a row)",
                device,
                f" ({why})" if why else "",
                hold,
                strikes,
            )
            if self.announce is not None:
                self.announce(device, hold, strikes, why)

    def heard(self, device: str, hold_s: float, strikes: int, now: float) -> None:
        """Another orchestrator holds ``device`` out for ``hold_s``: so do we (unless we hold it
        longer already); the failure is counted as its, not again as ours."""
        until = now + min(max(hold_s, 0.0), self.max_hold_s)
        with self._lock:
            record = self._records.get(device)
            if record is None:
                self._records[device] = _Record(strikes, until)
            elif until > record.held_until:
                record.held_until, record.strikes = until, max(strikes, record.strikes)

    def excluded(self, now: float, trials: Iterable[str] = ()) -> set[str]:
        """Devices no request may use now, except the ``trials`` a request holds: held out,
        or on probation with another request's trial under way."""
        own = set(trials)
        with self._lock:
            return {d for d, r in self._records.items() if d not in own and (now < r.held_until or r.trial)}

    def take_trials(self, now: float) -> frozenset[str]:
        """The devices on probation with no trial under way: this request may use them (and
        must :meth:`settle` them)."""
        with self._lock:
            taken = [d for d, r in self._records.items() if now >= r.held_until and not r.trial]
            for device in taken:
                self._records[device].trial = True
            return frozenset(taken)

    def settle(self, trials: Iterable[str], used: Iterable[str], failed: Iterable[str], now: float) -> None:
        """A request is over: its trials that worked without failing are forgiven; those it
        did not use are free for the next request; failures were counted as they happened
        (:meth:`failed`)."""
        used, failed = set(used), set(failed)
        with self._lock:
            for device in trials:
                record = self._records.get(device)
                if record is None or not record.trial:
                    continue
                if device in used and device not in failed and now >= record.held_until:
                    del self._records[device]
                    log.info("device %s passed its probation", device)
                else:
                    record.trial = False

    def penalised(self) -> set[str]:
        """Every device with a record (held out or on probation)."""
        with self._lock:
            return set(self._records)
