"""A run of consecutive stages: its shapes, its regions, and the chain as the planner sees it.

Shapes are walked forward from the input, the regions an output tile needs backward
from that tile; :func:`edgeci_mqtt.core.kernels.run_chain` then runs forward on the
shrinking regions. A fused block and the inside of a residual block both use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.stages import Stage
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import GeometryError

__all__ = ["ChainSpec", "chain_regions", "chain_shapes", "whole_map_flops"]


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


def whole_map_flops(stages: Sequence[Stage], shapes: Sequence[FeatureShape]) -> list[int]:
    """FLOPs of each stage computing its whole output map in one piece (no halo)."""
    return [
        stage.flops(TileRegion.whole(shapes[k + 1].height, shapes[k + 1].width), shapes[k])
        for k, stage in enumerate(stages)
    ]


@dataclass(frozen=True)
class ChainSpec:
    """A model's chain at one input size, as planning and simulation need it: no weights, no torch.

    ``shapes[k]`` is stage ``k``'s input shape (``shapes[-1]`` the last output);
    ``tail_work`` is what the non-spatial tail costs after the last stage. The models
    package builds it (:meth:`edgeci_mqtt.models.StageChain.spec`).
    """

    model: str
    stages: tuple[Stage, ...]
    shapes: tuple[FeatureShape, ...]
    tail_work: tuple[OpWork, ...]
    densities: tuple[float, ...] = ()
    """Share of non-zero values at each boundary on a typical input (measured with the
    model's weights: :func:`edgeci_mqtt.profiling.map_densities`); empty when unknown."""

    def __post_init__(self) -> None:
        if len(self.shapes) != len(self.stages) + 1:
            raise GeometryError(f"{self.model}: {len(self.stages)} stages need {len(self.stages) + 1} shapes")
