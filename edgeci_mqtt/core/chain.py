"""Shapes, regions and execution over a run of consecutive stages.

These three functions are the whole fused-tile algorithm: walk shapes forward,
walk the needed regions backward from the output tile, then run forward on the
shrinking regions. A fused block and the inside of a residual block both use them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.stages import Stage
from edgeci_mqtt.errors import GeometryError

__all__ = ["chain_regions", "chain_shapes", "run_chain", "whole_map_flops"]


def chain_shapes(stages: Sequence[Stage], in_shape: FeatureShape) -> list[FeatureShape]:
    """Shapes at every boundary: ``[input, after stage 0, ..., after the last]``.

    Raises :class:`GeometryError` naming the first stage whose output would be empty.
    """
    shapes = [in_shape]
    for stage in stages:
        out = stage.output_shape(shapes[-1])
        if out.height < 1 or out.width < 1:
            raise GeometryError(
                f"input {shapes[0]} is too small: stage {stage.name} ({stage.kind}) would turn {shapes[-1]} into {out}"
            )
        shapes.append(out)
    return shapes


def chain_regions(stages: Sequence[Stage], shapes: Sequence[FeatureShape], out_region: TileRegion) -> list[TileRegion]:
    """Needed regions at every boundary, walked back from ``out_region``.

    ``result[k]`` is the input region of stage ``k``; ``result[-1]`` is ``out_region``.
    """
    last = shapes[len(stages)]
    if not TileRegion.whole(last.height, last.width).contains(out_region) or out_region.area == 0:
        raise GeometryError(f"output region {out_region} is empty or outside the {last} map")
    regions = [out_region]
    for stage, shape in zip(reversed(stages), reversed(shapes[: len(stages)]), strict=True):
        regions.append(stage.input_region(regions[-1], shape))
    regions.reverse()
    return regions


def run_chain(
    stages: Sequence[Stage],
    in_shape: FeatureShape,
    x: Tensor,
    x_region: TileRegion,
    out_region: TileRegion,
) -> Tensor:
    """Compute ``out_region`` of the last stage from ``x`` holding ``x_region`` of the input."""
    shapes = chain_shapes(stages, in_shape)
    regions = chain_regions(stages, shapes, out_region)
    if not x_region.contains(regions[0]):
        raise GeometryError(f"input tile {x_region} does not cover the needed region {regions[0]}")
    if tuple(x.shape[-2:]) != (x_region.height, x_region.width):
        raise GeometryError(f"input tensor {tuple(x.shape)} does not match its region {x_region}")
    if not stages:  # an identity path (a residual shortcut): just the crop
        rows, cols = out_region.within(x_region)
        return x[:, :, rows, cols]
    for k, stage in enumerate(stages):
        x = stage.run(x, x_region, regions[k + 1], shapes[k])
        x_region = regions[k + 1]
    return x


def whole_map_flops(stages: Sequence[Stage], shapes: Sequence[FeatureShape]) -> list[int]:
    """FLOPs of each stage computing its whole output map in one piece (no halo)."""
    return [
        stage.flops(TileRegion.whole(shapes[k + 1].height, shapes[k + 1].width), shapes[k])
        for k, stage in enumerate(stages)
    ]
