"""AWAS: the auction that hands a block's workload partitions to devices.

Items are full-width row strips of the block's output (one output row each, or a few
rows on very tall maps). Strips rather than 2-D tiles because (a) adjacent strips
won by one device merge into one rectangular task, so a device never recomputes halo
between its own items; (b) a strip has no column halo, so its cost is linear in its
rows and a bid can be stated per item; (c) one-row granularity balances unequal
devices to within a row.

A device bids, for every item, the completion time of that item as a task of its own
(``alone``: both transfers with latency, halo input included, plus compute) and the
extra time when the item extends a run of items it already holds (``extend``: the
halo is then shared), plus its current queue. The auctioneer awards contiguous runs
so that the block's makespan is minimal (a binary search over the makespan with a
greedy sweep, for each of a few device orders), then re-auctions the boundary items of
the most loaded device to a neighbour or an idle bidder while that lowers the makespan.
With many bidders, an order whose first sweep cannot beat the best order's makespan is
not searched further. A device that did not bid gets nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion, split_span
from edgeci_mqtt.core.stages import Stage
from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.planner.costs import RowModel, make_task
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.planner.plan import Task

__all__ = [
    "MAX_ITEMS",
    "Award",
    "Bid",
    "HeldRows",
    "auction_item_count",
    "auction_items",
    "award",
    "award_tasks",
    "make_bid",
]

MAX_ITEMS = 128
"""Items per auction at most; taller maps get items of several rows."""


def auction_item_count(height: int, max_items: int = MAX_ITEMS) -> int:
    """How many row strips a block whose output is ``height`` rows tall is auctioned in."""
    return min(max_items, height)


def auction_items(out_shape: FeatureShape, max_items: int = MAX_ITEMS) -> tuple[Span, ...]:
    """The row strips auctioned for a block whose output has ``out_shape``."""
    return tuple(split_span(Span(0, out_shape.height), auction_item_count(out_shape.height, max_items)))


TOLERANCE = 1e-3
"""Relative precision of the makespan the award's search settles for, before its final
moves: the estimates behind the bids are not nearly this precise, and each halving of
it costs every device order one sweep more."""

PRUNE_FROM = 16
"""Bidders from which a device order whose first sweep cannot beat the best order's
makespan is dropped. With fewer, every order is searched and improved: each search is
cheap, and the re-auction moves, which shift whole items among few devices, can still
make a worse sweep the best award."""

IDLE_TRIED = 3
"""Idle bidders an award tries giving an item of a crowded run to, cheapest first."""


@dataclass(frozen=True)
class Bid:
    device: str
    queue_s: float
    alone_s: tuple[float, ...]
    extend_s: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.alone_s) != len(self.extend_s):
            raise PlanningError(f"bid of {self.device}: {len(self.alone_s)} alone vs {len(self.extend_s)} extend")


def make_bid(view: DeviceView, model: RowModel, block: FusedBlock, items: Sequence[Span], flow: bool = False) -> Bid:
    """A device's bid from its own profile, link and queue (computed on the device).

    ``alone[i]``: item ``i`` as a task of its own. ``extend[i]``: the extra time of
    item ``i`` joining the run that ends at item ``i-1`` (for item 0, the run that
    starts at item 1), i.e. the time of the pair minus the time of the neighbour.
    ``flow``: the output stays on the device (see :meth:`RowModel.moved_bytes`).
    """
    a = np.array([s.start for s in items], dtype=np.int64)
    b = np.array([s.stop for s in items], dtype=np.int64)
    alone = model.strip_seconds(view, block, a, b, flow) - view.queue_s
    if len(items) == 1:
        return Bid(view.name, view.queue_s, (float(alone[0]),), (float(alone[0]),))
    pairs = model.strip_seconds(view, block, a[:-1], b[1:], flow) - view.queue_s
    extend = np.concatenate([[pairs[0] - alone[1]], pairs - alone[:-1]])
    return Bid(view.name, view.queue_s, tuple(alone.tolist()), tuple(np.maximum(extend, 0.0).tolist()))


@dataclass(frozen=True)
class HeldRows:
    """Where a block's input rows already are (``flow``), and what that changes in a run's
    price: a device's bid priced every input row as arriving over its own link. A run of
    items ``[start, stop)`` needs input rows ``[lo[start], hi[stop])``. Rows the device holds
    itself cost it nothing; rows another device holds reach it no faster than that holder
    sends them, so a holder on a slower link than the taker's adds the difference per row
    (without it, the award moved rows off a device on a very slow link between blocks)."""

    lo: tuple[int, ...]
    """By first item: the first input row a run starting there needs."""
    hi: tuple[int, ...]
    """By end item (index ``stop``, 1..count): the end of the input rows a run needs."""
    bands: Mapping[str, tuple[int, int, float]]
    """By holder: its rows ``a``, ``b`` and the seconds one row takes over its link."""
    per_row: Mapping[str, float] = field(default_factory=dict)
    """By bidder: the seconds one row takes over its link (a holder's is in its band)."""

    def prefix(self, device: str) -> list[float]:
        """Running sums, over the input rows, of what each row changes in ``device``'s price."""
        rows = max(self.hi, default=0)
        own = self.bands.get(device)
        mine = own[2] if own is not None else self.per_row.get(device)
        change = [0.0] * rows
        for holder, (a, b, seconds) in self.bands.items():
            if holder == device:
                extra = -seconds  # its own rows: no transfer at all
            elif mine is not None and seconds > mine:
                extra = seconds - mine  # the holder sends them slower than it would get them
            else:
                continue
            for row in range(a, min(b, rows)):
                change[row] = extra
        return [0.0, *accumulate(change)]


class _Pricing:
    """Run costs for every bidder in O(1): ``queue + alone[a] + sum(extend[a+1:b]) - held``.

    Everything one run's price needs sits in one tuple per device, and the held rows'
    saving is inlined: on a large cluster the award's sweeps price runs so many times that
    each lookup and call is a share of planning time (docs/PLANNER.md, AWAS)."""

    def __init__(self, bids: Sequence[Bid], held: HeldRows | None = None) -> None:
        self._terms: dict[str, tuple[float, tuple[float, ...], list[float], list[float] | None]] = {
            b.device: (
                b.queue_s,
                b.alone_s,
                [0.0, *accumulate(b.extend_s)],
                held.prefix(b.device) if held is not None else None,
            )
            for b in bids
        }
        self._lo: tuple[int, ...] = held.lo if held is not None else ()
        self._hi: tuple[int, ...] = held.hi if held is not None else ()

    def run(self, device: str, start: int, stop: int) -> float:
        queue, alone, prefix, rows = self._terms[device]
        cost = queue + alone[start] + prefix[stop] - prefix[start + 1]
        if rows is None:
            return cost
        lo, hi = self._lo[start], self._hi[stop]  # what the run's input rows change in its price
        return cost + rows[hi] - rows[lo] if hi > lo else cost


@dataclass(frozen=True)
class Award:
    """Who won what: contiguous item runs, one per winning device, in item order."""

    runs: tuple[tuple[str, Span], ...]
    loads: Mapping[str, float]
    pruned: int = field(default=0, compare=False)
    """Device orders dropped after one sweep could not beat the best so far (many bidders)."""

    @property
    def makespan_s(self) -> float:
        return max(self.loads.values())


def _sweep(
    pricing: _Pricing, order: Sequence[str], count: int, limit: float, hints: dict[str, int] | None = None
) -> list[tuple[str, Span]] | None:
    """Runs in device order, each as long as fits within ``limit``; None if items remain.

    A run's price never falls as it grows (an item's extension prices its compute and the
    input rows it adds, and held rows take off at most those rows' transfer), so each run's
    end is found by search: from ``hints`` (each device's run length in the previous sweep,
    updated here; the limits of a bisection change little between sweeps) by doubling steps,
    then by bisection, which finds the same end as bisecting the whole range."""
    runs, pos = [], 0
    run = pricing.run
    for device in order:
        if pos == count:
            break
        guess = min(pos + max(hints.get(device, 1), 1) if hints is not None else pos + 1, count)
        if run(device, pos, guess) <= limit:  # fits: step up until it does not (or all fit)
            low, step = guess, 1
            high = count
            while low < count:
                probe = min(low + step, count)
                if run(device, pos, probe) <= limit:
                    low, step = probe, step * 2
                else:
                    high = probe - 1
                    break
        else:  # too long: step down until it fits (or nothing does)
            high, step = guess - 1, 1
            low = pos
            while high > pos:
                probe = max(high - step + 1, pos + 1)
                if run(device, pos, probe) <= limit:
                    low = probe
                    break
                high, step = probe - 1, step * 2
        while low < high:  # the longest run within the limit lies in [low, high]
            middle = (low + high + 1) // 2
            if run(device, pos, middle) <= limit:
                low = middle
            else:
                high = middle - 1
        if hints is not None:
            hints[device] = low - pos
        if low > pos:
            runs.append((device, Span(pos, low)))
            pos = low
    return runs if pos == count else None


def _shift(runs: list[tuple[str, Span]], giver: int, taker: int) -> list[tuple[str, Span]]:
    """Move one item from run ``giver`` towards run ``taker``: every run between passes
    one item on, keeping its size, so the item count moves without breaking contiguity."""
    new = runs.copy()
    step = 1 if taker > giver else -1
    for i in range(giver, taker, step):
        (d, span), (e, other) = new[i], new[i + step]
        if step > 0:
            new[i], new[i + step] = (d, Span(span.start, span.stop - 1)), (e, Span(other.start - 1, other.stop))
        else:
            new[i], new[i + step] = (d, Span(span.start + 1, span.stop)), (e, Span(other.start, other.stop + 1))
    return new


def _give_to_idle(runs: list[tuple[str, Span]], giver: int, idle: str, left: bool) -> list[tuple[str, Span]]:
    d, span = runs[giver]
    new = runs.copy()
    if left:
        new[giver] = (d, Span(span.start + 1, span.stop))
        new.insert(giver, (idle, Span(span.start, span.start + 1)))
    else:
        new[giver] = (d, Span(span.start, span.stop - 1))
        new.insert(giver + 1, (idle, Span(span.stop - 1, span.stop)))
    return new


def _improve(pricing: _Pricing, runs: list[tuple[str, Span]], bidders: Sequence[str]) -> list[tuple[str, Span]]:
    """Re-auction items of the most loaded device while that helps.

    A move takes one item from a device at the makespan and hands it, through the runs
    in between, to the least loaded device, or to an idle bidder next to it. It is kept
    when no device ends at or above the old makespan, or when fewer devices sit at it
    (the makespan can only fall then), so identical devices end within one row. A move
    reprices only the runs it changes.
    """

    def score(values: list[float]) -> tuple[float, int]:
        top = max(values)
        return top, sum(v >= top * (1 - 1e-9) for v in values)

    ranked: dict[int, list[str]] = {}

    def cheapest_idle(idle: set[str], item: int) -> list[str]:
        """The idle bidders that would take ``item`` alone cheapest (a few: on a large cluster
        trying every idle device on both sides of every crowded run made awarding most of
        planning; docs/PLANNER.md, AWAS). Every bidder's rank for an item is worked out once
        per award."""
        if item not in ranked:
            ranked[item] = sorted(bidders, key=lambda d: (pricing.run(d, item, item + 1), d))
        return [d for d in ranked[item] if d in idle][:IDLE_TRIED]

    def repriced(candidate: list[tuple[str, Span]], first: int, last: int, current: list[float]) -> list[float]:
        """Loads of ``candidate``, which differs from the runs priced in ``current`` in its runs
        ``first..last`` (one run more than them if it is one longer)."""
        tail = current[last + 1 - (len(candidate) - len(current)) :]
        return [*current[:first], *(pricing.run(d, s.start, s.stop) for d, s in candidate[first : last + 1]), *tail]

    current = [pricing.run(d, s.start, s.stop) for d, s in runs]
    for _ in range(2 * sum(s.size for _, s in runs)):
        top, crowd = score(current)
        idle = set(bidders) - {r[0] for r in runs}
        low = min(range(len(runs)), key=current.__getitem__)
        candidates = []
        for m in (i for i, v in enumerate(current) if v >= top * (1 - 1e-9) and runs[i][1].size > 1):
            if current[low] < top * (1 - 1e-9):
                shifted = _shift(runs, m, low)
                candidates.append((shifted, repriced(shifted, min(m, low), max(m, low), current)))
            span = runs[m][1]
            for left, item in ((True, span.start), (False, span.stop - 1)):
                for d in cheapest_idle(idle, item):
                    moved = _give_to_idle(runs, m, d, left)
                    candidates.append((moved, repriced(moved, m, m + 1, current)))
        improved = None
        for candidate, values in candidates:
            new_top, new_crowd = score(values)
            helps = new_top < top * (1 - 1e-9) or (new_top <= top * (1 + 1e-12) and new_crowd < crowd)
            if helps and (improved is None or score(values) < score(improved[1])):
                improved = (candidate, values)
        if improved is None:
            break
        runs, current = improved
    return runs


def _search(
    pricing: _Pricing, order: Sequence[str], count: int, beat: float = math.inf
) -> tuple[float, list[tuple[str, Span]]] | None:
    """The makespan and runs of the best sweep with devices in ``order``: a binary search
    on the makespan (each sweep is feasible or not). None, after one sweep, when no runs in
    this order beat ``beat`` (another order's) by the search's precision."""
    alone = {d: pricing.run(d, 0, count) for d in order}
    cheapest = min(alone, key=alone.__getitem__)
    hi, lo = alone[cheapest], 0.0
    best = [(cheapest, Span(0, count))]  # one device alone: always feasible
    hints: dict[str, int] = {}
    if beat < hi:
        runs = _sweep(pricing, order, count, beat * (1 - TOLERANCE), hints)
        if runs is None:
            return None
        hi, best = max(pricing.run(d, s.start, s.stop) for d, s in runs), runs
    while hi - lo > TOLERANCE * hi:
        mid = (lo + hi) / 2
        runs = _sweep(pricing, order, count, mid, hints)
        if runs is None:
            lo = mid
        else:  # what the runs really take, at most mid
            hi, best = max(pricing.run(d, s.start, s.stop) for d, s in runs), runs
    return hi, best


def _orders(pricing: _Pricing, names: Sequence[str], count: int, first: Sequence[str] = ()) -> list[list[str]]:
    """Device orders worth sweeping, from the bids alone (not from when they arrived).

    Which device takes the top, the middle or the bottom rows matters: an edge strip
    has a halo on one side only, so it suits a slow device best. Tried: ``first`` (the
    previous block's order, top to bottom, when rows stay on devices), by name, fastest
    first, slowest first, and the slowest devices at both edges with the fastest in the
    middle.
    """
    slowest_first = sorted(names, key=lambda d: (-pricing.run(d, 0, count), d))
    edges = slowest_first[0::2] + slowest_first[1::2][::-1]
    kept = [d for d in first if d in names]
    previous = kept + [d for d in slowest_first[::-1] if d not in kept] if kept else []
    orders: list[list[str]] = []
    for order in (previous, sorted(names), slowest_first[::-1], slowest_first, edges):
        if order and order not in orders:
            orders.append(order)
    return orders


def award(bids: Sequence[Bid], count: int, held: HeldRows | None = None, first: Sequence[str] = ()) -> Award:
    """Award ``count`` items to the bidders, minimising the block's makespan.

    The result depends on the bids (and ``held`` and ``first``, see :func:`_orders`)
    only, never on the bids' order (bids arrive in any order).
    """
    bids = [  # a sum is finite only if every price is (and none is absurdly large)
        b for b in bids if len(b.alone_s) == count and math.isfinite(sum(b.alone_s) + sum(b.extend_s) + b.queue_s)
    ]
    if not bids or count < 1:
        raise PlanningError("no device bid for this block")
    if len({b.device for b in bids}) < len(bids):
        raise PlanningError("two bids for one device: which one counts would depend on their order")
    pricing = _Pricing(bids, held)

    def makespan(runs: list[tuple[str, Span]]) -> float:
        return max(pricing.run(d, s.start, s.stop) for d, s in runs)

    searched, best, pruned = [], math.inf, 0
    for order in _orders(pricing, [b.device for b in bids], count, first):
        found = _search(pricing, order, count, best if len(bids) >= PRUNE_FROM else math.inf)
        if found is not None:
            searched.append((order, found[1]))
            best = min(best, found[0])
        else:
            pruned += 1
    candidates = [_improve(pricing, runs, order) for order, runs in searched]
    runs = min(candidates, key=makespan)  # the first of equals: orders are deterministic
    return Award(tuple(runs), {d: pricing.run(d, s.start, s.stop) for d, s in runs}, pruned)


def award_tasks(
    stages: Sequence[Stage],
    shapes: Sequence[FeatureShape],
    block: FusedBlock,
    items: Sequence[Span],
    won: Award,
) -> tuple[Task, ...]:
    """One task per winning device: its run of items merged into one full-width strip."""
    width = shapes[block.stop].width
    return tuple(
        make_task(
            stages, shapes, block, TileRegion(Span(items[s.start].start, items[s.stop - 1].stop), Span(0, width)), d
        )
        for d, s in won.runs
    )
