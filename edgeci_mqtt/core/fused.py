"""Fused blocks: consecutive stages whose output is computed tile by tile.

A :class:`FusedBlock` ``[start, stop)`` names stages of a chain. For one output tile
of the block, :func:`tile_input_region` gives the input rectangle to ship and
:func:`run_block_tile` computes the tile from it; :func:`run_fused` does the whole
chain block by block in-process and stitches the tiles, which is what the
distributed runtime does across devices.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from edgeci_mqtt.core.chain import chain_regions, run_chain, whole_map_flops
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion, tile_grid
from edgeci_mqtt.core.stages import Stage
from edgeci_mqtt.errors import GeometryError

__all__ = [
    "FusedBlock",
    "TileGrid",
    "balanced_blocks",
    "block_tile_flops",
    "check_partition",
    "parse_blocks",
    "run_block_tile",
    "run_fused",
    "tile_input_region",
]


@dataclass(frozen=True, order=True)
class FusedBlock:
    """Stages ``[start, stop)`` of a chain, run together on each tile."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise GeometryError(f"block {self.start}-{self.stop} is empty or negative")

    def stages(self, stages: Sequence[Stage]) -> Sequence[Stage]:
        if self.stop > len(stages):
            raise GeometryError(f"block {self} reaches past the last stage ({len(stages)} stages)")
        return stages[self.start : self.stop]

    def __str__(self) -> str:
        return f"{self.start}-{self.stop}"


@dataclass(frozen=True)
class TileGrid:
    """How many tile rows and columns to cut each block's output into."""

    rows: int
    cols: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise GeometryError(f"tile grid {self} must have at least one row and column")

    @classmethod
    def parse(cls, text: str) -> TileGrid:
        """``"3x3"`` -> 3 rows x 3 columns."""
        try:
            rows, cols = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise GeometryError(f"tile grid {text!r} is not of the form ROWSxCOLS, e.g. 3x3") from None
        return cls(rows, cols)

    def regions(self, shape: FeatureShape) -> list[TileRegion]:
        return tile_grid(shape.height, shape.width, self.rows, self.cols)

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


def parse_blocks(text: str, num_stages: int) -> list[FusedBlock]:
    """``"0-10,10-23,23-31"`` -> blocks that must tile ``[0, num_stages)`` in order."""
    blocks = []
    for part in text.split(","):
        try:
            start, stop = (int(v) for v in part.strip().split("-"))
        except ValueError:
            raise GeometryError(f"block {part.strip()!r} is not of the form START-STOP") from None
        blocks.append(FusedBlock(start, stop))
    check_partition(blocks, num_stages)
    return blocks


def check_partition(blocks: Sequence[FusedBlock], num_stages: int) -> None:
    """Blocks must be contiguous, in order, and cover every stage exactly once."""
    expected = 0
    for block in blocks:
        if block.start != expected:
            raise GeometryError(f"block {block} should start at stage {expected}")
        expected = block.stop
    if expected != num_stages:
        raise GeometryError(f"blocks end at stage {expected} but the model has {num_stages} stages")


def tile_input_region(
    stages: Sequence[Stage], shapes: Sequence[FeatureShape], block: FusedBlock, out_region: TileRegion
) -> TileRegion:
    """Input rectangle of ``block`` needed for its output tile ``out_region``.

    ``shapes`` are the chain's boundary shapes (``shapes[k]`` is stage ``k``'s input).
    """
    return chain_regions(block.stages(stages), shapes[block.start : block.stop + 1], out_region)[0]


def block_tile_flops(
    stages: Sequence[Stage], shapes: Sequence[FeatureShape], block: FusedBlock, out_region: TileRegion
) -> int:
    """FLOPs of one tile of ``block``, halo recomputation included."""
    inner = block.stages(stages)
    regions = chain_regions(inner, shapes[block.start : block.stop + 1], out_region)
    return sum(s.flops(regions[k + 1], shapes[block.start + k]) for k, s in enumerate(inner))


def balanced_blocks(stages: Sequence[Stage], shapes: Sequence[FeatureShape], count: int) -> list[FusedBlock]:
    """``count`` blocks of about equal whole-map FLOPs: a sensible default before DPFL."""
    per_stage = whole_map_flops(stages, shapes)
    count = max(1, min(count, len(stages)))
    total, running, cuts = sum(per_stage), 0, [0]
    for k, flops in enumerate(per_stage[:-1]):
        running += flops
        remaining_cuts = count - len(cuts)
        room = len(stages) - (k + 1)
        if remaining_cuts > 0 and (running >= total * len(cuts) / count or room == remaining_cuts):
            cuts.append(k + 1)
    cuts.append(len(stages))
    return [FusedBlock(a, b) for a, b in itertools.pairwise(cuts)]


def run_block_tile(
    stages: Sequence[Stage],
    shapes: Sequence[FeatureShape],
    block: FusedBlock,
    x: Tensor,
    x_region: TileRegion,
    out_region: TileRegion,
) -> Tensor:
    """Compute ``block``'s output tile ``out_region`` from ``x`` holding ``x_region``."""
    return run_chain(block.stages(stages), shapes[block.start], x, x_region, out_region)


def run_fused(
    stages: Sequence[Stage],
    shapes: Sequence[FeatureShape],
    blocks: Sequence[FusedBlock],
    grid: TileGrid,
    x: Tensor,
) -> Tensor:
    """Run every block tile by tile and stitch each block's output before the next."""
    check_partition(blocks, len(stages))
    for block in blocks:
        out_shape = shapes[block.stop]
        out = torch.empty(x.shape[0], out_shape.channels, out_shape.height, out_shape.width, dtype=x.dtype)
        whole_in = TileRegion.whole(x.shape[2], x.shape[3])
        for region in grid.regions(out_shape):
            need = tile_input_region(stages, shapes, block, region)
            rows, cols = need.within(whole_in)
            tile = run_block_tile(stages, shapes, block, x[:, :, rows, cols], need, region)
            out[:, :, region.rows.start : region.rows.stop, region.cols.start : region.cols.stop] = tile
        x = out
    return x
