"""A residual block as one atomic stage.

Fused blocks never cut through a skip connection, so the whole block (main path,
shortcut, add, ReLU) is a single stage. Inside, each path is an ordinary stage chain
run with :func:`run_chain`, so padding inside the block is applied at the border of
each intermediate map, exactly as the unfused module would.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import torch
from torch import Tensor

from edgeci_mqtt.core.chain import chain_regions, chain_shapes, run_chain
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion, Window
from edgeci_mqtt.core.stages import BYTES_PER_ELEMENT, Stage, Windows
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import ModelError

__all__ = ["ResidualStage"]


def _walk(path: Sequence[Stage], in_shape: FeatureShape) -> FeatureShape:
    """Output shape of a path, possibly empty (the outer chain reports emptiness)."""
    return reduce(lambda shape, stage: stage.output_shape(shape), path, in_shape)


class ResidualStage(Stage):
    """``relu(main(x) + shortcut(x))``; an empty shortcut is the identity."""

    kind = "residual"

    def __init__(self, name: str, main: Sequence[Stage], shortcut: Sequence[Stage] = ()) -> None:
        super().__init__(name)
        if not main:
            raise ModelError(f"{name}: a residual block needs a main path")
        self.main = tuple(main)
        self.shortcut = tuple(shortcut)

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

    def run(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        main = run_chain(self.main, in_shape, x, x_region, out_region)
        short = run_chain(self.shortcut, in_shape, x, x_region, out_region)
        return torch.relu(main + short)

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
