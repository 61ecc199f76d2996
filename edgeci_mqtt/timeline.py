"""Timelines: which resource was busy with what, and when; simulated or measured alike.

The simulator produces them from a plan; the orchestrator records them for a traced
request (``EdgeCIClient.infer(..., trace=True)``) so a measured run can be drawn with
the same Gantt chart and compared with the prediction, interval by interval.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.errors import WireError

__all__ = ["KINDS", "ORCHESTRATOR", "Interval", "block_label", "intervals_from_rows", "parse_task_label", "task_label"]

ORCHESTRATOR = "orchestrator"
KINDS: tuple[str, ...] = ("plan", "auction", "prepare", "receive", "compute", "send", "merge", "gateway", "tail")
"""What a resource can be busy with. ``receive``/``send`` are a device's link, down and
up; the other kinds are CPU work (``prepare``: slicing and encoding a task message)."""

_MAX_ROWS = 100_000
_TASK_LABEL = re.compile(r"stages (\d+)-(\d+) rows (\d+)-(\d+) cols (\d+)-(\d+)")


@dataclass(frozen=True)
class Interval:
    """``resource`` was busy with ``kind`` from ``start`` to ``end`` (seconds from the request)."""

    resource: str
    kind: str
    start: float
    end: float
    label: str = ""

    def to_row(self) -> list[Any]:
        return [self.resource, self.kind, self.start, self.end, self.label]


def intervals_from_rows(rows: object) -> tuple[Interval, ...]:
    """Intervals from their wire rows; :class:`WireError` names the first bad row."""
    if not isinstance(rows, list) or len(rows) > _MAX_ROWS:
        raise WireError(f"a timeline is a list of at most {_MAX_ROWS} rows")
    intervals = []
    for index, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 5):
            raise WireError(f"timeline row {index} is not [resource, kind, start, end, label]")
        resource, kind, start, end, label = row
        times_ok = all(
            isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) for t in (start, end)
        )
        if not (isinstance(resource, str) and isinstance(label, str) and kind in KINDS and times_ok):
            raise WireError(f"timeline row {index} is malformed: {row!r:.200}")
        if end < start:
            raise WireError(f"timeline row {index} ends before it starts")
        intervals.append(Interval(resource, kind, float(start), float(end), label))
    return tuple(intervals)


def block_label(block: FusedBlock) -> str:
    return f"stages {block.start}-{block.stop}"


def task_label(block: FusedBlock, out_region: TileRegion) -> str:
    """How a task's intervals are labelled, so a measured timeline can be priced again."""
    rows, cols = out_region.rows, out_region.cols
    return f"{block_label(block)} rows {rows.start}-{rows.stop} cols {cols.start}-{cols.stop}"


def parse_task_label(label: str) -> tuple[FusedBlock, TileRegion] | None:
    """The block and output region of a :func:`task_label`; None for any other label."""
    match = _TASK_LABEL.fullmatch(label)
    if match is None:
        return None
    start, stop, r0, r1, c0, c1 = map(int, match.groups())
    return FusedBlock(start, stop), TileRegion.of(r0, r1, c0, c1)
