"""Run a plan in one process: every task on its own tile, from the pieces its graph names.

This is what the distributed runtime does across devices, minus the network, and it
is how every strategy's plan is checked to give exactly the whole model's result. Each
holder (the orchestrator or a device) keeps the tiles the plan sends to it, by stage
boundary; a task's input is assembled from the pieces its :class:`TaskInput`\\ s name,
cut out of what their sources hold, so a plan that keeps rows on devices runs as
faithfully as one that gathers every block at the orchestrator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.kernels import Kernel
from edgeci_mqtt.errors import GeometryError
from edgeci_mqtt.planner.plan import BlockPlan, Plan, TaskInput
from edgeci_mqtt.timeline import ORCHESTRATOR

__all__ = ["run_plan"]


class _Holdings:
    """The tiles each holder keeps, by stage boundary."""

    def __init__(self, shapes: Sequence[FeatureShape], x: Tensor) -> None:
        self.shapes, self.batch, self.dtype = shapes, x.shape[0], x.dtype
        whole = TileRegion.whole(shapes[0].height, shapes[0].width)
        self.tiles: dict[tuple[str, int], list[tuple[TileRegion, Tensor]]] = {(ORCHESTRATOR, 0): [(whole, x)]}

    def keep(self, holder: str, boundary: int, region: TileRegion, tile: Tensor) -> None:
        self.tiles.setdefault((holder, boundary), []).append((region, tile))

    def assemble(self, pieces: Sequence[TaskInput], region: TileRegion) -> Tensor:
        """``region`` of one boundary, each piece cut from what its source holds.

        Raises :class:`GeometryError` unless the sources' tiles cover ``region`` exactly once.
        """
        boundary = pieces[0].boundary
        out = torch.empty(self.batch, self.shapes[boundary].channels, region.height, region.width, dtype=self.dtype)
        covered = torch.zeros(region.height, region.width, dtype=torch.int32)
        for piece in pieces:
            for held, tile in self.tiles.get((piece.source, boundary), []):
                part = held.intersection(piece.region)
                if part is not None:
                    (rows, cols), (src_rows, src_cols) = part.within(region), part.within(held)
                    out[:, :, rows, cols] = tile[:, :, src_rows, src_cols]
                    covered[rows, cols] += 1
        if not bool((covered == 1).all()):
            raise GeometryError(f"the pieces of {region} at boundary {boundary} are not all held exactly once")
        return out


def _check_cover(block_plan: BlockPlan, out_shape: FeatureShape) -> None:
    """A block's tasks must compute its output exactly once."""
    covered = sum(t.out_region.area for t in block_plan.tasks)
    whole = TileRegion.whole(out_shape.height, out_shape.width)
    tiles = [t.out_region for t in block_plan.tasks]
    overlap = any(a.intersection(b) for i, a in enumerate(tiles) for b in tiles[i + 1 :])
    if covered != whole.area or overlap or not all(whole.contains(t) for t in tiles):
        raise GeometryError(f"the tasks of block {block_plan.block} do not cover its {out_shape} output exactly once")


def run_plan(plan: Plan, kernels: Sequence[Kernel], shapes: Sequence[FeatureShape], x: Tensor) -> Tensor:
    """The feature map after the last stage, computed task by task as ``plan``'s graph says,
    and put together from wherever the last block left its tiles (the tail's input).

    Raises :class:`GeometryError` if a block's tasks do not cover its output exactly once.
    """
    holdings = _Holdings(shapes, x)
    for block_plan in plan.blocks:
        block = block_plan.block
        _check_cover(block_plan, shapes[block.stop])
        for task in block_plan.tasks:
            tile_in = holdings.assemble(task.inputs, task.in_region)
            tile = run_block_tile(kernels, shapes, block, tile_in, task.in_region, task.out_region)
            holdings.keep(task.output, block.stop, task.out_region, tile)
    last = shapes[-1]
    whole = TileRegion.whole(last.height, last.width)
    final = len(shapes) - 1
    if not plan.blocks:
        return holdings.assemble([TaskInput(final, whole, ORCHESTRATOR)], whole)
    return holdings.assemble([TaskInput(final, t.out_region, t.output) for t in plan.blocks[-1].tasks], whole)
