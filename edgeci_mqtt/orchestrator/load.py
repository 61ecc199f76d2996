"""The work handed out: predicted seconds of work on each device not yet seen finish.

The orchestrator decides how to serve each request from this ledger
(:func:`~edgeci_mqtt.planner.serving.choose_serving`, pure) and counts the work it hands
out here until the request is done, so the next request's decision sees it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["Commitments"]

D = TypeVar("D")


class Commitments:
    """Predicted seconds of work handed to each device and not yet finished (thread-safe)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._deciding = threading.Lock()

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)

    @contextmanager
    def claiming(self, decide: Callable[[dict[str, float]], tuple[D, Mapping[str, float]]]) -> Iterator[D]:
        """Decide from the work handed out so far and count the work decided on, as one step,
        until the block ends. Requests that arrive together are decided one after another,
        each seeing the others' work: apart, a burst of four saw an idle cluster four times,
        split all four requests and ran each at a quarter of the speed its deadline assumed.
        ``decide`` gets the snapshot and returns its decision and the work it hands out."""
        with self._deciding:
            decision, work = decide(self.snapshot())
            self._add(work, 1.0)
        try:
            yield decision
        finally:
            self._add(work, -1.0)

    def _add(self, work: Mapping[str, float], sign: float) -> None:
        with self._lock:
            for device, seconds in work.items():
                left = self._seconds.get(device, 0.0) + sign * seconds
                if left > 1e-9:
                    self._seconds[device] = left
                else:
                    self._seconds.pop(device, None)
