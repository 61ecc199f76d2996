"""Timelines: intervals name their block and region as fields; their wire rows round-trip and
anything else is refused with one clear WireError."""

from __future__ import annotations

import numpy as np
import pytest

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval, intervals_from_rows
from edgeci_mqtt.wire import ResponseMessage, decode, encode

pytestmark = pytest.mark.pure

INTERVALS = (
    Interval(ORCHESTRATOR, "plan", 0.0, 0.002, note="edgeci"),
    Interval(ORCHESTRATOR, "prepare", 0.002, 0.003, FusedBlock(0, 4), TileRegion.of(0, 9, 0, 56), "dev-1"),
    Interval("dev-1", "compute", 0.01, 0.05, FusedBlock(3, 17), TileRegion.of(4, 9, 0, 28)),
    Interval(ORCHESTRATOR, "gateway", 0.05, 0.06, FusedBlock(17, 20)),
    Interval(ORCHESTRATOR, "tail", 0.06, 0.06),
)


def test_intervals_travel_as_typed_values_in_a_response() -> None:
    response = decode(encode(ResponseMessage("q", logits=np.zeros((1, 3), np.float32), timeline=INTERVALS)))
    assert isinstance(response, ResponseMessage) and response.timeline == INTERVALS
    assert intervals_from_rows([i.to_row() for i in INTERVALS]) == INTERVALS


def test_a_row_is_flat_plain_data() -> None:
    assert INTERVALS[2].to_row() == ["dev-1", "compute", 0.01, 0.05, [3, 17], [4, 9, 0, 28], ""]
    assert INTERVALS[0].to_row() == [ORCHESTRATOR, "plan", 0.0, 0.002, None, None, "edgeci"]


GOOD = ["d", "compute", 0.0, 1.0, [0, 4], [0, 2, 0, 3], ""]


def with_field(index: int, value: object) -> list[object]:
    row = list(GOOD)
    row[index] = value
    return row


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("nope", "list of at most"),
        ([GOOD] * 100_001, "list of at most"),
        ([GOOD[:5]], "row 0 is not"),
        ([[*GOOD, 1]], "row 0 is not"),
        (["d"], "row 0 is not"),
        ([with_field(0, 7)], "row 0 is malformed"),
        ([with_field(0, "")], "row 0 is malformed"),
        ([with_field(0, "d" * 201)], "row 0 is malformed"),
        ([with_field(1, "dance")], "row 0 is malformed"),
        ([with_field(1, ["compute"])], "row 0 is malformed"),
        ([with_field(6, None)], "row 0 is malformed"),
        ([with_field(6, "n" * 201)], "row 0 is malformed"),
        ([with_field(2, "0")], "row 0: times"),
        ([with_field(2, True)], "row 0: times"),
        ([with_field(2, -0.5)], "row 0: times"),
        ([with_field(3, float("nan"))], "row 0: times"),
        ([with_field(3, float("inf"))], "row 0: times"),
        ([with_field(2, 2.0)], "ends before it starts"),
        ([with_field(4, [4, 4])], "row 0: block"),
        ([with_field(4, [5, 4])], "row 0: block"),
        ([with_field(4, [-1, 4])], "row 0: block"),
        ([with_field(4, [0, 4, 5])], "row 0: block"),
        ([with_field(4, [0.0, 4])], "row 0: block"),
        ([with_field(4, [False, True])], "row 0: block"),
        ([with_field(4, "0-4")], "row 0: block"),
        ([with_field(5, [0, 0, 0, 3])], "row 0: region"),
        ([with_field(5, [0, 2, 3, 3])], "row 0: region"),
        ([with_field(5, [0, 2, 0])], "row 0: region"),
        ([with_field(5, [0, 2, -1, 3])], "row 0: region"),
        ([with_field(5, "[0,2)x[0,3)")], "row 0: region"),
        ([GOOD, with_field(1, "dance")], "row 1 is malformed"),
    ],
)
def test_malformed_rows_raise_one_clear_error(rows: object, message: str) -> None:
    with pytest.raises(WireError, match=message):
        intervals_from_rows(rows)


def test_a_good_row_gives_typed_fields() -> None:
    (interval,) = intervals_from_rows([GOOD])
    assert interval.block == FusedBlock(0, 4) and interval.region == TileRegion.of(0, 2, 0, 3)
    assert (interval.start, interval.end, interval.note) == (0.0, 1.0, "")
