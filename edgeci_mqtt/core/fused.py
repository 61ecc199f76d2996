"""Fused blocks run with torch: one tile of a block, or a whole chain tile by tile.

:func:`run_block_tile` computes one output tile of a block from the input rectangle
:func:`edgeci_mqtt.core.blocks.tile_input_region` names; :func:`run_fused` does the
whole chain block by block in-process and stitches the tiles, which is what the
distributed runtime does across devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from edgeci_mqtt.core.blocks import FusedBlock, TileGrid, check_partition, tile_input_region
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.kernels import Kernel, run_chain

__all__ = ["run_block_tile", "run_fused"]


def run_block_tile(
    kernels: Sequence[Kernel],
    shapes: Sequence[FeatureShape],
    block: FusedBlock,
    x: Tensor,
    x_region: TileRegion,
    out_region: TileRegion,
) -> Tensor:
    """Compute ``block``'s output tile ``out_region`` from ``x`` holding ``x_region``."""
    return run_chain(block.stages(kernels), shapes[block.start], x, x_region, out_region)


def run_fused(
    kernels: Sequence[Kernel],
    shapes: Sequence[FeatureShape],
    blocks: Sequence[FusedBlock],
    grid: TileGrid,
    x: Tensor,
) -> Tensor:
    """Run every block tile by tile and stitch each block's output before the next."""
    stages = [k.stage for k in kernels]
    check_partition(blocks, len(stages))
    for block in blocks:
        out_shape = shapes[block.stop]
        out = torch.empty(x.shape[0], out_shape.channels, out_shape.height, out_shape.width, dtype=x.dtype)
        whole_in = TileRegion.whole(x.shape[2], x.shape[3])
        for region in grid.regions(out_shape):
            need = tile_input_region(stages, shapes, block, region)
            rows, cols = need.within(whole_in)
            tile = run_block_tile(kernels, shapes, block, x[:, :, rows, cols], need, region)
            out[:, :, region.rows.start : region.rows.stop, region.cols.start : region.cols.stop] = tile
        x = out
    return x
