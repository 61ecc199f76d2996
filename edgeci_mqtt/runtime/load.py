"""Serving a stream: split a request across devices, or run it whole on one (pure choice).

When requests are sparse, splitting (``flow``) gives the lowest latency, where its halo
and messages cost less than the devices it adds save (ResNet-34's split on the reference
clusters does not: it is served whole even on an idle cluster). When they queue,
every device is busy anyway, and a split request waits for the busiest device it uses,
while a whole request on one device (``replicas``) pays no halo, no messages between
devices and no tail transfer. The orchestrator keeps the predicted seconds of work it has
handed each device and not seen finish (:class:`Commitments`), and :func:`choose` takes
whichever finishes the request first: a split plan starts when the busiest of its devices
is free; a whole request runs on the device that would finish it first.

Except when every device is busy. Then the requests queue, and what bounds the latency
of all of them is throughput: a split that costs the devices more seconds in all (its
halo, its messages) than one device takes for the whole request only makes the queue
longer, however soon it would finish alone. Measured on homo4 with 4 VGG-16 requests in
flight, choosing by finish time alone split every request and served 0.6x the requests
per second of whole ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TypeVar

__all__ = ["Choice", "Commitments", "choose"]

D = TypeVar("D")


@dataclass(frozen=True)
class Choice:
    mode: Literal["split", "whole"]
    finish_s: float
    """Predicted seconds from now to the answer."""
    device: str = ""
    """For ``whole``: the device that runs it."""


def choose(
    split_s: float | None,
    split_devices: Sequence[str],
    whole_s: Mapping[str, float],
    outstanding: Mapping[str, float],
    split_cost_s: float = 0.0,
) -> Choice:
    """The earliest predicted finish; ``split_s`` None: splitting is not an option.

    ``split_cost_s``: the device-seconds a split takes from all its devices together; when
    every device has work out, a split dearer than the cheapest whole request is no option."""
    saturated = bool(whole_s) and all(outstanding.get(d, 0.0) > 0 for d in whole_s)
    if saturated and split_s is not None and split_cost_s >= min(whole_s.values()):
        split_s = None
    options = []
    if split_s is not None:
        start = max((outstanding.get(d, 0.0) for d in split_devices), default=0.0)
        options.append(Choice("split", start + split_s))
    for device, seconds in sorted(whole_s.items()):
        options.append(Choice("whole", outstanding.get(device, 0.0) + seconds, device))
    if not options:
        raise ValueError("no way to serve the request: no split plan and no device")
    return min(options, key=lambda c: (c.finish_s, c.mode != "split"))


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
