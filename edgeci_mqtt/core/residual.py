"""A residual block as one atomic stage (its geometry; :mod:`edgeci_mqtt.core.kernels` runs it).

Fused blocks never cut through a skip connection, so the whole block (main path,
shortcut, add, ReLU) is a single stage. Inside, each path is an ordinary stage chain,
so the regions and work inside the block are those of its layers at the border of
each intermediate map, exactly as the unfused module computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import ClassVar

from edgeci_mqtt.core.chain import chain_regions, chain_shapes
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion, Window
from edgeci_mqtt.core.stages import BYTES_PER_ELEMENT, Stage, Windows
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import ModelError

__all__ = ["ResidualStage"]


def _walk(path: tuple[Stage, ...], in_shape: FeatureShape) -> FeatureShape:
    """Output shape of a path, possibly empty (the outer chain reports emptiness)."""
    return reduce(lambda shape, stage: stage.output_shape(shape), path, in_shape)


@dataclass(frozen=True, kw_only=True)
class ResidualStage(Stage):
    """``relu(main(x) + shortcut(x))``; an empty shortcut is the identity."""

    kind: ClassVar[str] = "residual"
    main: tuple[Stage, ...]
    shortcut: tuple[Stage, ...] = ()

    def __post_init__(self) -> None:
        if not self.main:
            raise ModelError(f"{self.name}: a residual block needs a main path")

    @property
    def weighted(self) -> bool:
        return True

    @property
    def layers(self) -> int:
        return sum(s.layers for s in self.main)

    @property
    def windows(self) -> Windows:
        """The main path's windows composed into one (the shortcut reads a subset)."""
        rows = reduce(Window.then, (s.windows[0] for s in self.main))
        cols = reduce(Window.then, (s.windows[1] for s in self.main))
        return rows, cols

    def output_shape(self, in_shape: FeatureShape) -> FeatureShape:
        main, short = _walk(self.main, in_shape), _walk(self.shortcut, in_shape)
        if main.height > 0 and main.width > 0 and main != short:
            raise ModelError(f"{self.name}: main path gives {main} but the shortcut gives {short}")
        return main

    def input_region(self, out_region: TileRegion, in_shape: FeatureShape) -> TileRegion:
        main = chain_regions(self.main, chain_shapes(self.main, in_shape), out_region)[0]
        short = chain_regions(self.shortcut, chain_shapes(self.shortcut, in_shape), out_region)[0]
        return main.hull(short)

    def ops(self, out_region: TileRegion, in_shape: FeatureShape) -> list[OpWork]:
        work = []
        for path in (self.main, self.shortcut):
            shapes = chain_shapes(path, in_shape)
            regions = chain_regions(path, shapes, out_region)
            for k, stage in enumerate(path):
                work += stage.ops(regions[k + 1], shapes[k])
        out_elements = self.output_shape(in_shape).channels * out_region.area
        # add + ReLU: reads both paths, writes the sum
        work.append(OpWork("add", 2 * out_elements, 3 * out_elements * BYTES_PER_ELEMENT, 0, out_region.area))
        return work
