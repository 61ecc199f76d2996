"""Fused blocks: consecutive stages whose output is computed tile by tile (their geometry).

A :class:`FusedBlock` ``[start, stop)`` names stages of a chain. For one output tile
of the block, :func:`tile_input_region` gives the input rectangle to ship and
:func:`block_tile_flops` what computing it costs; :mod:`edgeci_mqtt.core.fused` runs it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from edgeci_mqtt.core.chain import chain_regions, whole_map_flops
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
    "tile_input_region",
]

T = TypeVar("T")


@dataclass(frozen=True, order=True)
class FusedBlock:
    """Stages ``[start, stop)`` of a chain, run together on each tile."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise GeometryError(f"block {self.start}-{self.stop} is empty or negative")

    def stages(self, stages: Sequence[T]) -> Sequence[T]:
        """This block's part of a chain (its stages, or their kernels)."""
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
