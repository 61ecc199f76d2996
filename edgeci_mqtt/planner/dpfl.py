"""DPFL: which consecutive stages to fuse, by bottom-up dynamic programming.

``best[0] = 0``; ``best[j] = min over i < j of best[i] + cost(i, j)``, filled in order
of ``j`` with back-pointers, so every prefix is solved once and the whole search is
O(n^2) cost evaluations, no recursion. The cost of a block is supplied by the caller
(:class:`BlockEstimator` for EdgeCI and AOFL), which keeps this function checkable
against exhaustive search on random costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.planner.cluster import Link
from edgeci_mqtt.planner.costs import Floats, Ints, RowModel, handoff_seconds, link_seconds
from edgeci_mqtt.planner.environment import MESSAGE_OVERHEAD_BYTES, DeviceView, Environment
from edgeci_mqtt.planner.profile import DeviceProfile

__all__ = ["BlockEstimate", "BlockEstimator", "best_segmentation"]


def best_segmentation(n: int, cost: Callable[[int, int], float]) -> tuple[float, list[FusedBlock]]:
    """Minimum total cost of cutting stages ``[0, n)`` into blocks, and the blocks."""
    best = [0.0] + [math.inf] * n
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            total = best[i] + cost(i, j)
            if total < best[j]:
                best[j], back[j] = total, i
    blocks, j = [], n
    while j > 0:
        blocks.append(FusedBlock(back[j], j))
        j = back[j]
    return best[n], blocks[::-1]


@dataclass(frozen=True)
class BlockEstimate:
    """Predicted seconds of one block and the rows each device would get."""

    seconds: float
    rows: dict[str, int]


class BlockEstimator:
    """Block costs from the row model (see :mod:`edgeci_mqtt.planner.costs`).

    Gathering (``flow`` false): a block costs the devices' makespan on their strips,
    plus the scatter and gather of every byte through the broker host's link
    (serialised there, so it adds to the makespan of equally loaded devices), plus the
    orchestrator's copies (slicing each strip's input, stitching each result).

    ``flow`` (rows stay on the devices): a strip receives only the input rows beyond its
    own share of the block's input map (its halo, assuming every device keeps about the
    same share from block to block), twice over links like its own (up the neighbour's,
    down its own, stored and forwarded by the broker), and keeps its output; only the
    first block's input comes from the orchestrator and only the last block's output
    goes back to it. The broker host's link carries the halo of every strip once, and
    each strip's messages cost its device CPU (:func:`~edgeci_mqtt.planner.costs.handoff_seconds`).

    Devices with the same profile, link and queue are priced once.
    """

    def __init__(self, model: RowModel, env: Environment, flow: bool = False) -> None:
        self.model = model
        self.env = env
        self.flow = flow
        kinds: dict[tuple[DeviceProfile, Link, float], list[DeviceView]] = {}
        for view in env.devices:
            kinds.setdefault((view.profile, view.link, view.queue_s), []).append(view)
        self._kinds = list(kinds.values())
        self._kind_of = {view.name: i for i, group in enumerate(self._kinds) for view in group}
        self._by_stop: dict[int, list[Floats]] = {}

    def _strips(self, block: FusedBlock) -> tuple[Ints, Ints]:
        """Centred strips of 1..H rows: the interior halo a typical strip pays."""
        height = self.model.shapes[block.stop].height
        rows = np.arange(1, height + 1, dtype=np.int64)
        a = (height - rows) // 2
        return a, a + rows

    def _compute_to(self, stop: int) -> list[Floats]:
        """Per device kind, compute seconds of the centred strips of every block ending at
        ``stop``: row ``i`` is block ``[i, stop)`` (suffix sums over the stages)."""
        if stop not in self._by_stop:
            a, b = self._strips(FusedBlock(0, stop))
            where = self.model.indices(FusedBlock(0, stop), a, b)
            self._by_stop[stop] = [
                np.cumsum(self.model.table(group[0].profile)[where][::-1], axis=0)[::-1] for group in self._kinds
            ]
        return self._by_stop[stop]

    def balanced(self, block: FusedBlock) -> BlockEstimate:
        """Rows shared so the block finishes earliest (what the AWAS auction finds)."""
        a, b = self._strips(block)
        height = len(a)
        moved = self._moved(block, a, b)
        compute = self._compute_to(block.stop)
        costs = np.stack(
            [
                np.maximum.accumulate(
                    link_seconds(group[0], moved) + compute[kind][block.start] + self._handoff(group[0])
                )
                for kind, group in enumerate(self._kinds)
            ]
        )
        counts = np.repeat(np.array([len(g) for g in self._kinds]), height)
        flat = costs.ravel()
        order = np.argsort(flat, kind="stable")
        reached = np.searchsorted(np.cumsum(counts[order]), height)
        finish = float(flat[order[reached]])
        rows = {}
        for group, line in zip(self._kinds, costs, strict=True):
            taken = int(np.searchsorted(line, finish, side="right"))
            rows.update({view.name: taken for view in group if taken})
        excess = sum(rows.values()) - height
        for name in sorted(rows, key=rows.__getitem__, reverse=True)[: max(excess, 0)]:
            rows[name] -= 1
        rows = {k: v for k, v in rows.items() if v}
        return BlockEstimate(finish + self.overhead(block, rows), rows)

    def _handoff(self, view: DeviceView) -> float:
        return handoff_seconds(view) if self.flow else 0.0

    def _halo_bytes(self, block: FusedBlock, a: Ints, b: Ints) -> Ints:
        """Input bytes of strips ``[a, b)`` beyond their own share of the input map (flow)."""
        inner = self.model.shapes[block.start].height / self.model.shapes[block.stop].height
        held = np.floor((b - a) * inner).astype(np.int64) * self.model.row_bytes(block.start)
        return np.maximum(self.model.input_bytes(block, a, b) - held, 0)

    def _moved(self, block: FusedBlock, a: Ints, b: Ints) -> Ints:
        """Bytes over a strip's own link (both directions together)."""
        if not self.flow or block.start == 0:
            return self.model.moved_bytes(block, a, b, self.flow)
        last = block.stop == len(self.model.stages)
        out = self.model.output_bytes(block, a, b) if last else 0
        return 2 * self._halo_bytes(block, a, b) + out + 2 * MESSAGE_OVERHEAD_BYTES

    def speeds(self, block: FusedBlock) -> dict[str, float]:
        """Each device's compute speed on this block (whole maps per second; links ignored)."""
        where = self.model.indices(block, np.array([0]), np.array([self.model.shapes[block.stop].height]))
        per_profile = {g[0].profile: 1.0 / float(self.model.table(g[0].profile)[where].sum()) for g in self._kinds}
        return {v.name: per_profile[v.profile] for v in self.env.devices}

    def runs_seconds(self, block: FusedBlock, runs: Sequence[tuple[str, Span]]) -> float:
        """Block time when device ``d`` computes rows ``span`` for each run."""
        by_kind: dict[int, list[Span]] = {}
        for device, span in runs:
            by_kind.setdefault(self._kind_of[device], []).append(span)
        finish = 0.0
        for kind, spans in by_kind.items():
            a = np.array([s.start for s in spans], dtype=np.int64)
            b = np.array([s.stop for s in spans], dtype=np.int64)
            finish = max(finish, float(self.model.strip_seconds(self._kinds[kind][0], block, a, b).max()))
        return finish + self.overhead(block, {d: s.size for d, s in runs})

    def overhead(self, block: FusedBlock, rows: dict[str, int]) -> float:
        """Broker-link traffic and the orchestrator's copies for these strips: scatter and
        gather, or under ``flow`` the image, the halo and the last block's output."""
        height = self.model.shapes[block.stop].height
        sizes = np.array(list(rows.values()), dtype=np.int64)
        a, b = (height - sizes) // 2, (height - sizes) // 2 + sizes
        scattered = float(self.model.input_bytes(block, a, b).sum())
        gathered = float(self.model.output_bytes(block, a, b).sum())
        copied = through = scattered + gathered
        if self.flow:
            first, last = block.start == 0, block.stop == len(self.model.stages)
            copied = (scattered if first else 0.0) + (gathered if last else 0.0)
            through = copied + (0.0 if first else float(self._halo_bytes(block, a, b).sum()))
        messages = 2 * len(sizes) * MESSAGE_OVERHEAD_BYTES
        link = self.env.broker_link
        copies = 2 * copied / self.env.orchestrator.rates["relu"]
        return (through + messages) / link.bytes_per_s + 2 * link.latency_s + copies
