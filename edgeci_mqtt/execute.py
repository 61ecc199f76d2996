"""Run a plan in one process: every task of every block on its own tile, stitched.

This is what the distributed runtime does across devices, minus the network, and it
is how every strategy's plan is checked to give exactly the whole model's result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.kernels import Kernel
from edgeci_mqtt.errors import GeometryError
from edgeci_mqtt.planner.plan import Plan

__all__ = ["run_plan"]


def run_plan(plan: Plan, kernels: Sequence[Kernel], shapes: Sequence[FeatureShape], x: Tensor) -> Tensor:
    """The feature map after the last stage, computed task by task as ``plan`` says.

    Raises :class:`GeometryError` if a block's tasks do not cover its output exactly once.
    """
    for block_plan in plan.blocks:
        block, out_shape = block_plan.block, shapes[block_plan.block.stop]
        out = torch.empty(x.shape[0], out_shape.channels, out_shape.height, out_shape.width, dtype=x.dtype)
        covered = torch.zeros(out_shape.height, out_shape.width, dtype=torch.int32)
        whole = TileRegion.whole(x.shape[2], x.shape[3])
        for task in block_plan.tasks:
            rows, cols = task.in_region.within(whole)
            tile = run_block_tile(kernels, shapes, block, x[:, :, rows, cols], task.in_region, task.out_region)
            r, c = task.out_region.rows, task.out_region.cols
            out[:, :, r.start : r.stop, c.start : c.stop] = tile
            covered[r.start : r.stop, c.start : c.stop] += 1
        if not bool((covered == 1).all()):
            raise GeometryError(f"the tasks of block {block} do not cover its {out_shape} output exactly once")
        x = out
    return x
