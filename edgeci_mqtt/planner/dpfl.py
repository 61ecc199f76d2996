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

import numpy as np

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.planner.costs import Floats, Ints, RowModel, handoff_seconds, link_seconds
from edgeci_mqtt.planner.environment import MESSAGE_OVERHEAD_BYTES, DeviceView, Environment

__all__ = ["BlockEstimator", "best_segmentation"]


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
        self._seconds_to: dict[int, Floats] = {}

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

    def seconds_to(self, stop: int) -> Floats:
        """Seconds of every block ``[i, stop)``, by ``i``, with its rows shared so that it
        finishes earliest (what the AWAS auction finds): DPFL's costs, all blocks ending at
        ``stop`` at once (one by one they were most of a plan's time on a large cluster:
        docs/PLANNER.md, DPFL).

        A device of kind ``k`` given ``r`` rows finishes at ``cost[k, r]`` (non-decreasing in
        ``r``); the block finishes at the least time by which the devices can take every
        row, and the rows each then takes are priced for the broker link
        (:meth:`overhead`), the most loaded giving back any rows beyond the map's height."""
        if stop not in self._seconds_to:
            self._seconds_to[stop] = self._price_blocks_to(stop)
        return self._seconds_to[stop]

    def _price_blocks_to(self, stop: int) -> Floats:
        a, b = self._strips(FusedBlock(0, stop))
        height = len(a)
        starts = range(stop)
        # bytes of the centred strips of 1..height rows (row r - 1), by block start
        inputs = self.model.input_bytes_to(stop, a, b)
        outputs = self.model.output_bytes(FusedBlock(0, stop), a, b)
        halo = self._halo_matrix(stop, a, b, inputs) if self.flow else np.zeros_like(inputs)
        out = outputs if not self.flow or stop == len(self.model.stages) else np.zeros_like(outputs)
        # bytes over a strip's own link, both ways: its input and output (gathering, and a flow's
        # first block), or its halo up a neighbour's link and down its own and the last output
        moved = inputs + out + 2 * MESSAGE_OVERHEAD_BYTES
        if self.flow:
            moved[1:] = 2 * halo[1:] + out + 2 * MESSAGE_OVERHEAD_BYTES
        compute = self._compute_to(stop)
        counts = np.array([len(g) for g in self._kinds])
        costs = np.stack(  # (start, kind, rows - 1)
            [
                np.maximum.accumulate(link_seconds(g[0], moved) + compute[k] + self._handoff(g[0]), axis=1)
                for k, g in enumerate(self._kinds)
            ],
            axis=1,
        )
        flat = costs.reshape(stop, -1)
        order = np.argsort(flat, axis=1, kind="stable")
        reached = (np.cumsum(np.repeat(counts, height)[order], axis=1) < height).sum(axis=1)
        everyone = np.arange(stop)
        finish = flat[everyone, order[everyone, reached]]
        taken = (costs <= finish[:, None, None]).sum(axis=2)  # (start, kind): rows each device of the kind takes
        sizes, weights = _trimmed(taken, counts, height)
        rows = np.maximum(sizes - 1, 0)
        scattered = (weights * np.take_along_axis(inputs, rows, axis=1)).sum(axis=1)
        gathered = (weights * outputs[rows]).sum(axis=1)
        halos = (weights * np.take_along_axis(halo, rows, axis=1)).sum(axis=1)
        strips = weights.sum(axis=1)
        return np.array(
            [
                finish[i]
                + self._link_overhead(
                    FusedBlock(i, stop), int(scattered[i]), int(gathered[i]), int(halos[i]), int(strips[i])
                )
                for i in starts
            ]
        )

    def _halo_matrix(self, stop: int, a: Ints, b: Ints, inputs: Ints) -> Ints:
        """:meth:`_halo_bytes` of the strips ``[a, b)`` of every block ending at ``stop``, by start
        (``inputs``: their input bytes, by start)."""
        return np.maximum(inputs - self._own_share(range(stop), stop, a, b), 0)

    def _handoff(self, view: DeviceView) -> float:
        return handoff_seconds(view) if self.flow else 0.0

    def _halo_bytes(self, block: FusedBlock, a: Ints, b: Ints) -> Ints:
        """Input bytes of strips ``[a, b)`` beyond their own share of the input map (flow)."""
        own = self._own_share([block.start], block.stop, a, b)[0]
        return np.maximum(self.model.input_bytes(block, a, b) - own, 0)

    def _own_share(self, starts: Sequence[int], stop: int, a: Ints, b: Ints) -> Ints:
        """Bytes of each block input map (by start) that strips ``[a, b)`` of the output hold
        already, if every device keeps about the same share of the map from block to block."""
        shapes = self.model.shapes
        inner = np.array([shapes[i].height / shapes[stop].height for i in starts])
        row_bytes = np.array([self.model.row_bytes(i) for i in starts], dtype=np.int64)
        return np.floor((b - a)[None, :] * inner[:, None]).astype(np.int64) * row_bytes[:, None]

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
        halo = int(self._halo_bytes(block, a, b).sum()) if self.flow else 0
        scattered, gathered = self.model.input_bytes(block, a, b), self.model.output_bytes(block, a, b)
        return self._link_overhead(block, int(scattered.sum()), int(gathered.sum()), halo, len(sizes))

    def _link_overhead(self, block: FusedBlock, scattered: int, gathered: int, halo: int, strips: int) -> float:
        """:meth:`overhead` from the strips' total bytes in, out and (``flow``) of halo."""
        copied = through = float(scattered + gathered)
        if self.flow:
            first, last = block.start == 0, block.stop == len(self.model.stages)
            copied = (scattered if first else 0.0) + (gathered if last else 0.0)
            through = copied + (0.0 if first else float(halo))
        messages = 2 * strips * MESSAGE_OVERHEAD_BYTES
        link = self.env.broker_link
        copies = 2 * copied / self.env.orchestrator.rates["relu"]
        return (through + messages) / link.bytes_per_s + 2 * link.latency_s + copies


def _trimmed(taken: Ints, counts: Ints, height: int) -> tuple[Ints, Ints]:
    """Strip sizes and how many devices have each, by row of ``taken`` (one per block
    start), when each of ``counts[k]`` devices of kind ``k`` takes ``taken[:, k]`` rows:
    the most loaded give one back each until they cover exactly ``height`` rows (ties:
    the earlier kind first). Columns ``2k`` and ``2k + 1`` are kind ``k``'s devices that
    keep their rows and those that gave one back; a size of 0 has weight 0."""
    excess = (taken * counts).sum(axis=1, keepdims=True) - height
    order = np.argsort(-taken, axis=1, kind="stable")
    before = np.cumsum(counts[order], axis=1) - counts[order]  # devices of kinds more loaded, by rank
    back = np.empty_like(taken)
    np.put_along_axis(back, order, np.clip(excess - before, 0, counts[order]), axis=1)
    sizes = np.stack([taken, taken - 1], axis=2).reshape(len(taken), -1)
    weights = np.stack([counts - back, back], axis=2).reshape(len(taken), -1)
    return sizes, np.where(sizes > 0, weights, 0)
