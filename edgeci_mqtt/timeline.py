"""Timelines: which resource was busy with what, and when; simulated or measured alike.

The simulator produces them from a plan; the orchestrator records them for a traced
request (``EdgeCIClient.infer(..., trace=True)``) so a measured run can be drawn with
the same Gantt chart and compared with the prediction, interval by interval. An
interval of a task names its block and output region as fields, so either kind of
timeline can be priced again tile by tile without parsing any text.

On the wire an interval is one row ``[resource, kind, start, end, block, region,
note]``: ``block`` is ``[start, stop]`` or None, ``region`` is ``[y0, y1, x0, x1]`` or
None. :func:`intervals_from_rows` checks every field and raises :class:`WireError`
naming the first bad row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.text import brief

__all__ = ["KINDS", "ORCHESTRATOR", "Interval", "intervals_from_rows"]

ORCHESTRATOR = "orchestrator"
KINDS: tuple[str, ...] = ("plan", "auction", "prepare", "receive", "compute", "send", "merge", "gateway", "tail")
"""What a resource can be busy with. ``receive``/``send`` are a device's link, down and
up; the other kinds are CPU work (``prepare``: slicing and encoding a task message)."""

_MAX_ROWS = 100_000
_MAX_TEXT = 200  # characters of a resource name or a note


@dataclass(frozen=True)
class Interval:
    """``resource`` was busy with ``kind`` from ``start`` to ``end`` (seconds from the request).

    ``block`` and ``region`` say which task's tile the work was for (None for work of
    no single task: planning, auctions, the tail); ``note`` is free detail for a
    reader, such as the device a task message was prepared for or what an auction waited for.
    """

    resource: str
    kind: str
    start: float
    end: float
    block: FusedBlock | None = None
    region: TileRegion | None = None
    note: str = ""

    def to_row(self) -> list[Any]:
        block = None if self.block is None else [self.block.start, self.block.stop]
        region = self.region
        area = None if region is None else [region.rows.start, region.rows.stop, region.cols.start, region.cols.stop]
        return [self.resource, self.kind, self.start, self.end, block, area, self.note]


def _ints(value: object, count: int) -> list[int] | None:
    """``value`` as ``count`` non-negative ints in increasing pairs, or None if it is not that."""
    if not (isinstance(value, list) and len(value) == count):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return value if all(value[i] < value[i + 1] for i in range(0, count, 2)) else None


def _time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _text(value: object, empty: bool) -> bool:
    return isinstance(value, str) and len(value) <= _MAX_TEXT and (empty or bool(value))


def _interval(row: object, index: int) -> Interval:
    if not (isinstance(row, list) and len(row) == 7):
        raise WireError(f"timeline row {index} is not [resource, kind, start, end, block, region, note]")
    resource, kind, start, end, block, region, note = row
    if not (_text(resource, empty=False) and kind in KINDS and _text(note, empty=True)):
        raise WireError(f"timeline row {index} is malformed: {brief(row, 200)}")
    if not (_time(start) and _time(end)):
        raise WireError(f"timeline row {index}: times must be finite seconds >= 0, got {brief(start)} and {brief(end)}")
    if end < start:
        raise WireError(f"timeline row {index} ends before it starts")
    span = None if block is None else _ints(block, 2)
    if block is not None and span is None:
        raise WireError(f"timeline row {index}: block {brief(block)} is not [start, stop] with 0 <= start < stop")
    area = None if region is None else _ints(region, 4)
    if region is not None and area is None:
        raise WireError(f"timeline row {index}: region {brief(region)} is not a non-empty [y0, y1, x0, x1]")
    return Interval(
        resource,
        kind,
        float(start),
        float(end),
        None if span is None else FusedBlock(*span),
        None if area is None else TileRegion.of(*area),
        note,
    )


def intervals_from_rows(rows: object) -> tuple[Interval, ...]:
    """Intervals from their wire rows; :class:`WireError` names the first bad row."""
    if not isinstance(rows, list) or len(rows) > _MAX_ROWS:
        raise WireError(f"a timeline is a list of at most {_MAX_ROWS} rows")
    return tuple(_interval(row, index) for index, row in enumerate(rows))
