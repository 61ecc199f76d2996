"""The cost model: what a tile costs on a device, exactly or from the row model.

Exact: a tile's :class:`Task` carries its op list and bytes, priced by a device's
profile plus its link (latency both ways, bytes in and out). Plans carry exact tasks,
and the simulator replays them.

Row model: DPFL prices every one of the O(n^2) candidate blocks and AWAS prices every
item of an auction, too many to build op lists for. Both use full-width row strips,
whose cost needs only integer geometry: a strip ``[a, b)`` of block ``[i, j)`` needs,
at every stage ``k`` inside, the rows the composed row window of stages ``k+1..j-1``
reaches from ``[a, b)``, clipped to the map, and each stage's price for any number of
rows is tabulated once per profile. Full-width strips have no column halo, so this is
exact but for the residual blocks' inner halo at the map border. Everything is
vectorised over strips with NumPy.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from edgeci_mqtt.core.blocks import FusedBlock, tile_input_region
from edgeci_mqtt.core.chain import chain_regions
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion, Window
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.core.stages import BYTES_PER_ELEMENT, Stage
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.planner.environment import FLOW_STEP_MESSAGES, MESSAGE_OPS, MESSAGE_OVERHEAD_BYTES, DeviceView
from edgeci_mqtt.planner.plan import Task, TaskInput
from edgeci_mqtt.timeline import ORCHESTRATOR

__all__ = ["RowModel", "TaskWork", "input_region", "link_seconds", "make_task"]

Ints = NDArray[np.int64]
V = TypeVar("V")
Floats = NDArray[np.float64]


_REGION_CHAINS = 8
"""Chains whose tiles' input regions are remembered (a process plans a few models)."""
_REGIONS_PER_CHAIN = 8192
_Regions = dict[tuple[tuple[FeatureShape, ...], FusedBlock, TileRegion], TileRegion]
_regions: dict[int, tuple[Sequence[Stage], _Regions]] = {}
_regions_lock = threading.Lock()  # orchestrator workers plan side by side


def input_region(
    stages: Sequence[Stage], shapes: Sequence[FeatureShape], block: FusedBlock, out_region: TileRegion
) -> TileRegion:
    """:func:`tile_input_region`, remembered: every re-plan and every award asks again for
    the same strips, and a residual block's regions take a while to walk. Remembered per
    chain by the identity of its stages (built once per model; hashing them, nested frozen
    dataclasses hashed anew each time, cost more than the walk), then by the shapes, the
    block and the region."""
    key = (tuple(shapes), block, out_region)
    with _regions_lock:
        entry = _regions.get(id(stages))
        if entry is None or entry[0] is not stages:  # the entry holds its stages: their id is not reused
            if len(_regions) >= _REGION_CHAINS:
                _regions.pop(next(iter(_regions)), None)
            entry = _regions[id(stages)] = (stages, {})
        region = entry[1].get(key)
    if region is None:
        region = tile_input_region(stages, shapes, block, out_region)
        with _regions_lock:
            if len(entry[1]) >= _REGIONS_PER_CHAIN:
                entry[1].clear()
            entry[1][key] = region
    return region


def make_task(
    stages: Sequence[Stage],
    shapes: Sequence[FeatureShape],
    block: FusedBlock,
    out_region: TileRegion,
    device: str,
    inputs: tuple[TaskInput, ...] | None = None,
    output: str = ORCHESTRATOR,
) -> Task:
    """The task computing ``out_region`` of ``block`` on ``device``: its input pieces
    (default: the whole input region from the orchestrator) and who keeps its output
    (default: the orchestrator)."""
    in_region = input_region(stages, shapes, block, out_region)
    in_bytes = shapes[block.start].channels * in_region.area * BYTES_PER_ELEMENT
    out_bytes = shapes[block.stop].channels * out_region.area * BYTES_PER_ELEMENT
    pieces = inputs if inputs is not None else (TaskInput(block.start, in_region, ORCHESTRATOR),)
    return Task(device, out_region, in_bytes, out_bytes, pieces, output)


class TaskWork:
    """The exact ops of any tile of any block of one chain (memoised: the simulator
    asks for the same tiles again and again)."""

    def __init__(self, stages: Sequence[Stage], shapes: Sequence[FeatureShape]) -> None:
        self.stages, self.shapes = stages, shapes
        self._cache: dict[tuple[FusedBlock, TileRegion], tuple[OpWork, ...]] = {}

    def __call__(self, block: FusedBlock, out_region: TileRegion) -> tuple[OpWork, ...]:
        key = (block, out_region)
        if key not in self._cache:
            inner = block.stages(self.stages)
            regions = chain_regions(inner, self.shapes[block.start : block.stop + 1], out_region)
            self._cache[key] = tuple(
                op for k, s in enumerate(inner) for op in s.ops(regions[k + 1], self.shapes[block.start + k])
            )
        return self._cache[key]


@dataclass(frozen=True)
class _Reach:
    """Composed row windows from every map ``m <= stop`` to the rows of map ``stop``, by
    ``m`` (arrays, so one call prices every block ending at ``stop``), and those maps' heights."""

    stride: Ints
    padding: Ints
    extent: Ints
    height: Ints

    @classmethod
    def of(cls, windows: Sequence[Window], heights: Sequence[int]) -> _Reach:
        def column(values: list[int]) -> Ints:
            return np.array(values, dtype=np.int64)[:, None]

        return cls(
            column([w.stride for w in windows]),
            column([w.padding for w in windows]),
            column([w.extent for w in windows]),
            column(list(heights)),
        )

    def rows(self, a: Ints, b: Ints, maps: slice) -> Ints:
        """Rows of each map in ``maps`` that the output rows ``[a, b)`` need: (maps, strips)."""
        stride, padding = self.stride[maps], self.padding[maps]
        lo = np.maximum(a * stride - padding, 0)
        hi = np.minimum((b - 1) * stride - padding + self.extent[maps], self.height[maps])
        return np.maximum(hi - lo, 0)


@dataclass(frozen=True)
class _OpGrid:
    """Every op of every stage at every row count of its output, as flat arrays (what
    pricing them on a profile needs, the same for every profile): ops one after another,
    in stage order, each over rows ``0..height``; ``positions`` is where each entry goes in
    :meth:`RowModel.table`."""

    flops: Floats
    moved: Floats
    pixels: Floats
    positions: Ints
    groups: dict[tuple[str, int], Ints]
    """Entries by op kind and depth (ops priced alike)."""
    empty: Ints
    """Table positions of no rows (stage ``k``, ``r = 0``)."""
    size: int

    @classmethod
    def of(cls, model: RowModel) -> _OpGrid:
        flops, moved, pixels, positions = [], [], [], []
        groups: dict[tuple[str, int], list[Ints]] = {}
        entries = 0
        for k in range(len(model.stages)):
            one, two = model._stage_ops(k)
            rows = np.arange(model.shapes[k + 1].height + 1, dtype=np.float64)
            step = rows - 1
            for op1, op2 in zip(one, two, strict=True):
                flops.append(op1.flops + (op2.flops - op1.flops) * step)
                moved.append(op1.bytes + (op2.bytes - op1.bytes) * step)
                pixels.append(op1.pixels + (op2.pixels - op1.pixels) * step)
                positions.append(model._offsets[k] + np.arange(len(rows), dtype=np.int64))
                groups.setdefault((op1.kind, op1.depth), []).append(np.arange(entries, entries + len(rows)))
                entries += len(rows)
        last = len(model.stages) - 1
        return cls(
            flops=np.concatenate(flops),
            moved=np.concatenate(moved),
            pixels=np.concatenate(pixels),
            positions=np.concatenate(positions).astype(np.int64),
            groups={kind: np.concatenate(where).astype(np.int64) for kind, where in groups.items()},
            empty=np.asarray(model._offsets, dtype=np.int64),
            size=int(model._offsets[last] + model.shapes[last + 1].height + 1),
        )


PROFILES_PRICED = 32
"""Device profiles whose prices a row model remembers, the least recently used dropped:
devices re-announce corrected speeds, and each correction is a new profile."""


class RowModel:
    """Costs of full-width row strips of any block of one chain at one input size (its
    orchestrator's workers share it: thread-safe)."""

    def __init__(self, stages: Sequence[Stage], shapes: Sequence[FeatureShape]) -> None:
        self.stages, self.shapes = stages, shapes
        self._reach: list[_Reach] = [_Reach.of([Window()], [shapes[0].height])]  # by stop
        for stop in range(1, len(stages) + 1):
            windows = [Window()]  # map k's window onto map stop's rows, for k = stop .. 0
            for k in range(stop - 1, -1, -1):
                windows.append(stages[k].windows[0].then(windows[-1]))
            self._reach.append(_Reach.of(windows[::-1], [shapes[k].height for k in range(stop + 1)]))
        self._tables: OrderedDict[DeviceProfile, Floats] = OrderedDict()
        self._whole: OrderedDict[DeviceProfile, float] = OrderedDict()
        self._priced = threading.Lock()
        self._ops: dict[int, tuple[list[OpWork], list[OpWork]]] = {}
        self._offsets = np.cumsum([0] + [shapes[k + 1].height + 1 for k in range(len(stages) - 1)])
        self._map_bytes = np.array([self.row_bytes(m) for m in range(len(shapes))], dtype=np.int64)

    def _stage_ops(self, k: int) -> tuple[list[OpWork], list[OpWork]]:
        """Ops of stage ``k`` for one and for two interior full-width output rows."""
        if k not in self._ops:
            stage, out = self.stages[k], self.shapes[k + 1]
            lo = max(0, out.height // 2 - 1)
            self._ops[k] = tuple(  # type: ignore[assignment]
                stage.ops(TileRegion(Span(lo, lo + r), Span(0, out.width)), self.shapes[k])
                for r in (1, min(2, out.height))
            )
        return self._ops[k]

    def table(self, profile: DeviceProfile) -> Floats:
        """Seconds of every stage for every row count, flat: stage ``k`` with ``r`` output
        rows is at ``offsets[k] + r``.

        A stage's ops for ``r`` rows are linear in ``r`` (FLOPs, bytes, pixels; a
        residual block's inner halo included), so two op lists give them all; the
        price is not linear, since small tiles run convolutions less efficiently.
        """

        def price() -> Floats:
            grid = self._grid
            seconds = np.empty(len(grid.positions))
            for (kind, depth), where in grid.groups.items():  # one priced array per kind of op
                seconds[where] = profile.op_seconds_array(
                    kind, depth, grid.flops[where], grid.moved[where], grid.pixels[where]
                )
            # summed op by op, in order, as a stage runs them; no rows cost nothing
            table: Floats = np.bincount(grid.positions, weights=seconds, minlength=grid.size).astype(np.float64)
            table[grid.empty] = 0.0
            return table

        return self._remembered(self._tables, profile, price)

    def _remembered(self, cache: OrderedDict[DeviceProfile, V], profile: DeviceProfile, price: Callable[[], V]) -> V:
        """``cache[profile]``, priced once (outside the lock: pricing is the slow part) and
        kept among the :data:`PROFILES_PRICED` used last."""
        with self._priced:
            if profile in cache:
                cache.move_to_end(profile)
                return cache[profile]
        value = price()
        with self._priced:
            cache[profile] = value
            while len(cache) > PROFILES_PRICED:
                cache.popitem(last=False)
        return value

    @functools.cached_property
    def _grid(self) -> _OpGrid:
        return _OpGrid.of(self)

    def indices(self, block: FusedBlock, a: Ints, b: Ints) -> Ints:
        """Positions in :meth:`table` of every stage of ``block`` for strips ``[a, b)``."""
        rows = self._reach[block.stop].rows(a, b, slice(block.start + 1, block.stop + 1))
        return self._offsets[block.start : block.stop, None] + rows

    def compute_seconds(self, profile: DeviceProfile, block: FusedBlock, a: Ints, b: Ints) -> Floats:
        """Compute time of strips ``[a, b)`` of ``block`` on ``profile``."""
        return self.table(profile)[self.indices(block, a, b)].sum(axis=0)

    def whole_seconds(self, profile: DeviceProfile) -> float:
        """Compute time of the whole chain on the whole map on ``profile``, from its exact ops:
        a whole request is priced as the simulator prices every tile, not by strips (whose
        interior rows overstate a whole map's edges by a few per cent), so that a split plan's
        simulated makespan and a whole request's seconds compare like with like. Remembered
        per profile (the serving decision asks on every request); the ops once (building them
        is most of the cost, and devices re-announce corrected profiles)."""
        return self._remembered(self._whole, profile, lambda: profile.work_seconds(self._whole_ops))

    @functools.cached_property
    def _whole_ops(self) -> tuple[OpWork, ...]:
        final = self.shapes[-1]
        return tuple(
            TaskWork(self.stages, self.shapes)(
                FusedBlock(0, len(self.stages)), TileRegion.whole(final.height, final.width)
            )
        )

    def input_bytes(self, block: FusedBlock, a: Ints, b: Ints) -> Ints:
        return self.row_bytes(block.start) * self._reach[block.stop].rows(a, b, slice(block.start, block.start + 1))[0]

    def input_bytes_to(self, stop: int, a: Ints, b: Ints) -> Ints:
        """:meth:`input_bytes` of strips ``[a, b)`` of every block ``[i, stop)``, by ``i``."""
        return self._map_bytes[:stop, None] * self._reach[stop].rows(a, b, slice(0, stop))

    def row_bytes(self, boundary: int) -> int:
        """Bytes of one full-width row of the map at ``boundary``."""
        shape = self.shapes[boundary]
        return shape.channels * shape.width * BYTES_PER_ELEMENT

    def input_rows(self, block: FusedBlock, a: int, b: int) -> tuple[int, int]:
        """The rows ``[lo, hi)`` of the block's input map that its output rows ``[a, b)`` need."""
        reach, m = self._reach[block.stop], block.start
        stride, padding, extent = int(reach.stride[m, 0]), int(reach.padding[m, 0]), int(reach.extent[m, 0])
        return max(a * stride - padding, 0), min((b - 1) * stride - padding + extent, int(reach.height[m, 0]))

    def output_bytes(self, block: FusedBlock, a: Ints, b: Ints) -> Ints:
        shape = self.shapes[block.stop]
        return shape.channels * shape.width * BYTES_PER_ELEMENT * (b - a)

    def moved_bytes(self, block: FusedBlock, a: Ints, b: Ints, flow: bool = False) -> Ints:
        """Bytes of the task and result messages of strips ``[a, b)``.

        With ``flow`` a strip's output stays on its device (only the last block's
        leaves it, for the tail); its whole input is priced as arriving, and the
        auctioneer takes off what the device already holds (:func:`~edgeci_mqtt.planner.awas.award`).
        """
        out = self.output_bytes(block, a, b)
        if flow and block.stop < len(self.stages):
            out = np.zeros_like(out)
        return self.input_bytes(block, a, b) + out + 2 * MESSAGE_OVERHEAD_BYTES

    def strip_seconds(self, view: DeviceView, block: FusedBlock, a: Ints, b: Ints, flow: bool = False) -> Floats:
        """Completion time on ``view`` of strips ``[a, b)`` as tasks of their own (``flow``:
        with the CPU of the halo messages, :func:`handoff_seconds`)."""
        moved = self.moved_bytes(block, a, b, flow)
        handoff = handoff_seconds(view) if flow else 0.0
        return link_seconds(view, moved) + self.compute_seconds(view.profile, block, a, b) + handoff


def handoff_seconds(view: DeviceView) -> float:
    """The CPU a ``flow`` strip spends on its block's messages, on ``view``: a block more
    is this much more per device, whatever its size (so DPFL does not cut VGG-16 into
    eleven blocks that each wait for their neighbours' halo)."""
    return FLOW_STEP_MESSAGES * message_seconds(view.profile)


def message_seconds(profile: DeviceProfile) -> float:
    """CPU one message costs a device (or the orchestrator) with ``profile``, to send or to receive."""
    return MESSAGE_OPS * profile.op_overhead_s


def intake_seconds(orchestrator: DeviceProfile, image_bytes: float) -> float:
    """The orchestrator's CPU for taking a request in, whatever serves it: its message, and
    its image copied out of it. Its answer out is one message more."""
    return message_seconds(orchestrator) + 2 * image_bytes / orchestrator.rates["relu"]


def link_seconds(view: DeviceView, moved: Ints) -> Floats:
    """Queue, both latencies and the bytes of a task and its result on the device's link."""
    return view.queue_s + 2 * view.link.latency_s + moved / view.bytes_per_s
