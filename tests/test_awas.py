"""AWAS: bids from the row model, awards that minimise the makespan, pinned properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.planner.awas import (
    PRUNE_FROM,
    TOLERANCE,
    Award,
    Bid,
    HeldRows,
    _improve,
    _orders,
    _Pricing,
    _search,
    auction_items,
    award,
    make_bid,
)
from edgeci_mqtt.planner.costs import RowModel
from edgeci_mqtt.planner.environment import DeviceView
from tests.planning import device

pytestmark = pytest.mark.pure


@pytest.fixture(scope="module")
def vgg_costs(chains: dict[str, StageChain]) -> RowModel:
    chain = chains["vgg16"]
    return RowModel(chain.stages, chain.shapes(224, 224))


BLOCKS = [FusedBlock(0, 5), FusedBlock(5, 10), FusedBlock(10, 17), FusedBlock(0, 10)]


def run_auction(costs: RowModel, block: FusedBlock, views: list[DeviceView]) -> tuple[Award, tuple[Span, ...]]:
    items = auction_items(costs.shapes[block.stop])
    return award([make_bid(v, costs, block, items) for v in views], len(items)), items


def shares(won: Award, items: tuple[Span, ...]) -> dict[str, int]:
    return {d: sum(items[i].size for i in range(s.start, s.stop)) for d, s in won.runs}


def assert_partition(won: Award, count: int) -> None:
    """Every item exactly once, in contiguous runs, at most one run per device."""
    spans = [s for _, s in won.runs]
    assert spans[0].start == 0 and spans[-1].stop == count
    assert all(a.stop == b.start for a, b in itertools.pairwise(spans))
    devices = [d for d, _ in won.runs]
    assert len(devices) == len(set(devices))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), block=st.sampled_from(BLOCKS), gflops=st.sampled_from([5.0, 50.0]))
def test_identical_devices_get_equal_shares_within_one_row(
    vgg_costs: RowModel, n: int, block: FusedBlock, gflops: float
) -> None:
    won, items = run_auction(vgg_costs, block, [device(f"d{i}", gflops) for i in range(n)])
    assert_partition(won, len(items))
    got = shares(won, items)
    assert len(got) == n
    assert max(got.values()) - min(got.values()) <= 1


@settings(max_examples=15, deadline=None)
@given(block=st.sampled_from(BLOCKS), gflops=st.sampled_from([5.0, 20.0]))
def test_a_device_twice_as_fast_gets_about_twice_the_rows(
    vgg_costs: RowModel, block: FusedBlock, gflops: float
) -> None:
    won, items = run_auction(vgg_costs, block, [device("fast", 2 * gflops), device("slow", gflops)])
    got = shares(won, items)
    assert 1.6 <= got["fast"] / got["slow"] <= 2.5, got


def test_a_device_behind_a_far_slower_link_gets_less_or_nothing(vgg_costs: RowModel) -> None:
    block = FusedBlock(0, 5)
    peers = [device(f"d{i}", 5.0, mbit=1000) for i in range(3)]
    won, items = run_auction(vgg_costs, block, [*peers, device("remote", 5.0, mbit=10)])
    got = shares(won, items)
    assert got.get("remote", 0) < min(got[p.name] for p in peers)
    won, _ = run_auction(vgg_costs, block, [*peers, device("hopeless", 5.0, mbit=0.1, latency_ms=500)])
    assert "hopeless" not in dict(won.runs)


def test_only_bidders_win(vgg_costs: RowModel) -> None:
    block = FusedBlock(0, 5)
    items = auction_items(vgg_costs.shapes[block.stop])
    views = [device(f"d{i}") for i in range(4)]
    bids = [make_bid(v, vgg_costs, block, items) for v in views if v.name != "d2"]
    won = award(bids, len(items))
    assert "d2" not in dict(won.runs) and set(dict(won.runs)) <= {"d0", "d1", "d3"}
    assert_partition(won, len(items))
    with pytest.raises(PlanningError, match="no device bid"):
        award([], len(items))


def test_a_busy_device_gets_less(vgg_costs: RowModel) -> None:
    block = FusedBlock(5, 10)
    items = auction_items(vgg_costs.shapes[block.stop])
    idle, busy = device("idle", 5.0), DeviceView("busy", device("x", 5.0).profile, device("x").link, queue_s=0.05)
    won = award([make_bid(v, vgg_costs, block, items) for v in (idle, busy)], len(items))
    got = shares(won, items)
    assert got.get("busy", 0) < got["idle"]


def test_item_granularity_is_one_row_until_maps_get_tall(vgg_costs: RowModel) -> None:
    assert [s.size for s in auction_items(vgg_costs.shapes[5])] == [1] * 112
    tall = auction_items(vgg_costs.shapes[1])  # 224 rows: 128 items of one or two rows
    assert len(tall) == 128 and {s.size for s in tall} == {1, 2}


@st.composite
def structured_bids(draw: st.DrawFn) -> tuple[list[Bid], int]:
    """Bids shaped like real ones: a fixed halo cost per run plus a cost per item."""
    count = draw(st.integers(1, 7))
    bids = []
    for d in range(draw(st.integers(1, 3))):
        halo = draw(st.floats(0.0, 2.0))
        per_item = draw(st.lists(st.floats(0.01, 3.0), min_size=count, max_size=count))
        queue = draw(st.floats(0.0, 1.0))
        bids.append(Bid(f"d{d}", queue, tuple(halo + c for c in per_item), tuple(per_item)))
    return bids, count


def brute_force_makespan(bids: list[Bid], count: int) -> float:
    """Best makespan over every cut of the items into runs, devices in bid order (here also
    name order, one of the orders the award sweeps), each device taking one run or none."""
    best = math.inf
    n = len(bids)
    for cuts in itertools.product(range(count + 1), repeat=n - 1):
        bounds = [0, *cuts, count]
        if any(a > b for a, b in itertools.pairwise(bounds)):
            continue
        load = 0.0
        for bid, (a, b) in zip(bids, itertools.pairwise(bounds), strict=True):
            if b > a:
                load = max(load, bid.queue_s + bid.alone_s[a] + sum(bid.extend_s[a + 1 : b]))
        best = min(best, load)
    return best


@settings(max_examples=200, deadline=None)
@given(case=structured_bids())
def test_award_is_optimal_for_contiguous_runs(case: tuple[list[Bid], int]) -> None:
    bids, count = case
    won = award(bids, count)
    assert_partition(won, count)
    assert won.makespan_s <= brute_force_makespan(bids, count) * (1 + 1e-6) + 1e-12


def test_award_never_fails_on_valid_or_discards_non_finite_bids() -> None:
    lopsided = [Bid("a", 0.0, (1.0, 1.0), (0.0, 100.0)), Bid("b", 0.0, (10.0, 1000.0), (0.0, 0.0))]
    won = award(lopsided, 2)
    assert_partition(won, 2)
    broken = Bid("nan", 0.0, (float("nan"), 1.0), (0.0, 0.0))
    assert "nan" not in dict(award([*lopsided, broken], 2).runs)


HETERO = [("fast", 20.0), ("mid", 10.0), ("slow", 4.0), ("crawl", 1.0), ("mid2", 10.0)]


@pytest.mark.parametrize("block", [FusedBlock(0, 10), FusedBlock(10, 17)])
def test_the_award_does_not_depend_on_the_order_bids_arrive_in(vgg_costs: RowModel, block: FusedBlock) -> None:
    items = auction_items(vgg_costs.shapes[block.stop])
    bids = [make_bid(device(name, gflops), vgg_costs, block, items) for name, gflops in HETERO]
    first = award(bids, len(items))
    for order in itertools.islice(itertools.permutations(bids), 1, None, 17):
        assert award(list(order), len(items)) == first


def test_sweeping_several_device_orders_beats_one(vgg_costs: RowModel) -> None:
    """Who takes the edge strips (halo on one side only) matters; the award tries orders
    by speed as well as by name and keeps the best."""
    block = FusedBlock(17, 24)
    items = auction_items(vgg_costs.shapes[block.stop])
    named = [("a-fast", 20.0), ("b-mid", 10.0), ("c-slow", 12.0), ("d-mid", 10.0), ("e-fast", 20.0)]
    bids = [make_bid(device(name, gflops), vgg_costs, block, items) for name, gflops in named]
    pricing = _Pricing(bids)
    order = [n for n, _ in named]
    searched = _search(pricing, order, len(items))
    assert searched is not None
    in_name_order = _improve(pricing, searched[1], order)
    won = award(bids, len(items))
    assert_partition(won, len(items))
    assert won.makespan_s < 0.95 * max(pricing.run(d, s.start, s.stop) for d, s in in_name_order)


def test_with_many_bidders_an_order_that_cannot_win_is_dropped_without_losing_the_best(
    vgg_costs: RowModel,
) -> None:
    """From PRUNE_FROM bidders on, an order whose first sweep cannot beat the best so far
    is not searched further: the award still comes within the search's precision of the
    best search over every order."""
    block = FusedBlock(17, 24)
    items = auction_items(vgg_costs.shapes[block.stop])
    speeds = [4.0, 6.0, 9.0, 12.0, 20.0]
    named = [(f"d{i:02d}", speeds[i % len(speeds)] * (1 + i / 50)) for i in range(PRUNE_FROM + 4)]
    bids = [make_bid(device(name, gflops), vgg_costs, block, items) for name, gflops in named]
    pricing = _Pricing(bids)
    searched = [_search(pricing, order, len(items)) for order in _orders(pricing, [n for n, _ in named], len(items))]
    best = min(found[0] for found in searched if found is not None)
    won = award(bids, len(items))
    assert won.pruned > 0, "no order was dropped: the case does not exercise pruning"
    assert_partition(won, len(items))
    assert won.makespan_s <= best * (1 + 2 * TOLERANCE)


def test_two_bids_for_one_device_are_refused() -> None:
    """Which of them counted would depend on their order."""
    one, other = Bid("a", 0.0, (1.0, 1.0), (1.0, 1.0)), Bid("a", 0.0, (5.0, 5.0), (5.0, 5.0))
    with pytest.raises(PlanningError, match="two bids for one device"):
        award([one, other, Bid("b", 0.0, (2.0, 2.0), (2.0, 2.0))], 2)


def test_rows_held_on_a_slow_link_cost_a_taker_what_the_holder_takes_to_send_them() -> None:
    """Its own rows cost a device nothing; another's cost it the difference when their holder
    sends slower than it receives; rows nobody holds, or held behind a faster link, as bid."""
    held = HeldRows(
        lo=(0, 1, 2, 3),
        hi=(0, 1, 2, 3, 4),
        bands={"slow": (0, 2, 0.5), "fast": (2, 4, 0.01)},
        per_row={"slow": 0.5, "fast": 0.01, "new": 0.02},
    )
    assert held.prefix("slow") == pytest.approx([0.0, -0.5, -1.0, -1.0, -1.0])  # fast's rows: it gets them fast
    assert held.prefix("fast") == pytest.approx([0.0, 0.49, 0.98, 0.97, 0.96])
    assert held.prefix("new") == pytest.approx([0.0, 0.48, 0.96, 0.96, 0.96])
    same = [Bid(d, 0.0, (1.0,) * 4, (1.0,) * 4) for d in ("slow", "fast")]
    won = award(same, 4, held)
    runs = dict(won.runs)
    assert runs["slow"] == Span(0, 2) and runs["fast"] == Span(2, 4)  # each keeps the rows it holds
    assert won.loads["slow"] == pytest.approx(2 - 1.0) and won.loads["fast"] == pytest.approx(2 - 0.02)
