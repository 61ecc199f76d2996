"""The tail weights a device holds, as devices announce them and the planner prices them."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

from edgeci_mqtt.core.bounds import MaxLen
from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.core.work import LINEAR_CHUNK_ROWS, chunks_of
from edgeci_mqtt.errors import PlanningError

__all__ = ["MAX_TAIL_RUNS", "TailRows"]

MAX_TAIL_RUNS = 256
"""Runs of held rows a device announces at most (it holds rows in chunks, and on a budget)."""


@dataclass(frozen=True)
class TailRows:
    """The tail's fully connected weights a device has made for one model: runs of the
    first layer's rows (in order, apart), and whether it has the layers after it.

    A device holds no classifier at boot and makes what a placement gives it (slow on a
    small board: docs/PLANNER.md, tail placement), so what it holds decides what a
    placement costs: the planner prices the chunks of :data:`LINEAR_CHUNK_ROWS` rows a
    device lacks (:meth:`missing_rows`)."""

    first: Annotated[tuple[Span, ...], MaxLen(MAX_TAIL_RUNS)] = ()
    rest: bool = False

    def __post_init__(self) -> None:
        if any(run.start < 0 or not run.size for run in self.first) or any(
            a.stop >= b.start for a, b in itertools.pairwise(self.first)
        ):
            raise PlanningError(f"held rows {self.first} are not in order and apart")

    def missing_rows(self, features: Span, total: int) -> int:
        """Rows a device holding these must make to compute ``features`` of a first layer
        of ``total`` features: the whole chunks they touch that it does not hold."""
        missing = 0
        for chunk in chunks_of(features):
            rows = Span(chunk * LINEAR_CHUNK_ROWS, min(total, (chunk + 1) * LINEAR_CHUNK_ROWS))
            at = bisect.bisect_right(self._starts, rows.start) - 1  # the one run that could hold it
            if at < 0 or not self.first[at].contains(rows):
                missing += rows.size
        return missing

    @cached_property
    def _starts(self) -> list[int]:
        return [run.start for run in self.first]

    @classmethod
    def of_chunks(cls, chunks: set[int] | frozenset[int], total: int, rest: bool) -> TailRows:
        """From the indexes of the chunks held, merged into runs (the first
        :data:`MAX_TAIL_RUNS`: announcing fewer rows than held only costs a price too high)."""
        runs: list[Span] = []
        for chunk in sorted(chunks):
            start, stop = chunk * LINEAR_CHUNK_ROWS, min(total, (chunk + 1) * LINEAR_CHUNK_ROWS)
            if runs and runs[-1].stop == start:
                runs[-1] = Span(runs[-1].start, stop)
            else:
                runs.append(Span(start, stop))
        return cls(tuple(runs[:MAX_TAIL_RUNS]), rest)
