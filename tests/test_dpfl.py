"""DPFL's bottom-up recurrence against exhaustive search over every segmentation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.planner.dpfl import best_segmentation

pytestmark = pytest.mark.pure


def exhaustive(n: int, cost: dict[tuple[int, int], float]) -> float:
    best = float("inf")
    for mask in itertools.product((False, True), repeat=n - 1):
        bounds = [0, *(k + 1 for k, cut in enumerate(mask) if cut), n]
        best = min(best, sum(cost[(a, b)] for a, b in itertools.pairwise(bounds)))
    return best


@st.composite
def cost_tables(draw: st.DrawFn) -> tuple[int, dict[tuple[int, int], float]]:
    n = draw(st.integers(1, 12))
    values = st.floats(0.0, 100.0, allow_nan=False)
    return n, {(i, j): draw(values) for i in range(n) for j in range(i + 1, n + 1)}


@settings(max_examples=150, deadline=None)
@given(case=cost_tables())
def test_recurrence_equals_exhaustive_search(case: tuple[int, dict[tuple[int, int], float]]) -> None:
    n, cost = case
    total, blocks = best_segmentation(n, lambda i, j: cost[(i, j)])
    assert abs(total - exhaustive(n, cost)) <= 1e-9 * max(1.0, total)
    assert blocks[0].start == 0 and blocks[-1].stop == n
    assert all(a.stop == b.start for a, b in itertools.pairwise(blocks))
    assert abs(sum(cost[(b.start, b.stop)] for b in blocks) - total) <= 1e-9 * max(1.0, total)


def test_fusion_chosen_when_boundaries_are_expensive() -> None:
    def cost(i: int, j: int) -> float:
        return 10.0 + (j - i)  # every block pays a fixed 10: fuse everything

    assert best_segmentation(6, cost)[1] == [FusedBlock(0, 6)]

    def halo(i: int, j: int) -> float:
        return (j - i) ** 2  # halo grows with depth: no fusion

    assert best_segmentation(4, halo)[1] == [FusedBlock(k, k + 1) for k in range(4)]
