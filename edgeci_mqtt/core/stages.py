"""Spatial stages as geometry: the units a CNN is cut into, described without torch.

A stage is plain frozen data: its kind, one :class:`Window` per axis, and what its
work depends on (channels, groups, bias). From that alone it answers everything the
planner, the simulator and a device validating a task ask: the output shape of any
input shape, the exact input region of any output region, and the primitive
operations (:class:`OpWork`) computing that region. Running a stage on tensors is
the job of :mod:`edgeci_mqtt.core.kernels`, which pairs each stage with the torch
module holding its weights; keeping the two apart is what lets the planner and the
simulator run without importing torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from edgeci_mqtt.core.geometry import FeatureShape, TileRegion, Window
from edgeci_mqtt.core.work import OpWork

__all__ = [
    "BYTES_PER_ELEMENT",
    "IDENTITY",
    "AvgPoolStage",
    "BatchNormStage",
    "ConvStage",
    "MaxPoolStage",
    "ReLUStage",
    "Stage",
    "WindowStage",
    "Windows",
]

BYTES_PER_ELEMENT = 4
"""Feature maps are float32 everywhere (compute and wire)."""

Windows = tuple[Window, Window]
"""Row and column geometry of a stage."""
IDENTITY: Windows = (Window(), Window())


@dataclass(frozen=True, kw_only=True)
class Stage(ABC):
    """One spatial step of a CNN (a layer, or a whole residual block).

    ``name`` is the path of the stage's module in its model, which is how weights are
    found for it (for execution and for sending them over the broker).
    """

    name: str
    kind: ClassVar[str] = "stage"

    @property
    @abstractmethod
    def windows(self) -> Windows:
        """Row and column geometry; composed for multi-layer stages."""

    @abstractmethod
    def output_shape(self, in_shape: FeatureShape) -> FeatureShape:
        """Output shape for an input shape (height/width 0 when the input is too small)."""

    @abstractmethod
    def input_region(self, out_region: TileRegion, in_shape: FeatureShape) -> TileRegion:
        """Exact input region (clipped to the map) needed to compute ``out_region``."""

    @abstractmethod
    def ops(self, out_region: TileRegion, in_shape: FeatureShape) -> list[OpWork]:
        """The primitive operations computing ``out_region``, halo inside the stage included."""

    @property
    def weighted(self) -> bool:
        """Whether it is a weight layer (a convolution, or a block of them): where the
        layer-by-layer baselines start a group."""
        return False

    @property
    def layers(self) -> int:
        """Layers as Darknet counts them: convolutions and pools (batch norms and
        activations fold into their convolution; a block counts its main path)."""
        return 0

    def flops(self, out_region: TileRegion, in_shape: FeatureShape) -> int:
        """Floating-point operations to compute ``out_region`` (multiply-add = 2)."""
        return sum(op.flops for op in self.ops(out_region, in_shape))

    def output_bytes(self, out_region: TileRegion, in_shape: FeatureShape) -> int:
        """Bytes of the float32 output tile ``out_region`` for one sample."""
        return self.output_shape(in_shape).channels * out_region.area * BYTES_PER_ELEMENT


@dataclass(frozen=True, kw_only=True)
class WindowStage(Stage):
    """A single sliding-window or pointwise op (identity windows when pointwise)."""

    windows: Windows = IDENTITY

    def output_channels(self, in_channels: int) -> int:
        """Output channels for ``in_channels`` input channels (the same unless a convolution)."""
        return in_channels

    def output_shape(self, in_shape: FeatureShape) -> FeatureShape:
        rows, cols = self.windows
        return FeatureShape(
            self.output_channels(in_shape.channels), rows.output_size(in_shape.height), cols.output_size(in_shape.width)
        )

    def reach(self, out_region: TileRegion) -> TileRegion:
        """Input region read by ``out_region`` before clipping (may include padding)."""
        rows, cols = self.windows
        return TileRegion(rows.reach(out_region.rows), cols.reach(out_region.cols))

    def input_region(self, out_region: TileRegion, in_shape: FeatureShape) -> TileRegion:
        rows, cols = self.windows
        return TileRegion(rows.needed(out_region.rows, in_shape.height), cols.needed(out_region.cols, in_shape.width))

    @abstractmethod
    def _flops_per_output(self) -> int:
        """FLOPs per output element."""

    def _depth(self) -> int:
        """Input elements reduced per output element (a conv's or pool's window; 0 if pointwise)."""
        return 0

    def ops(self, out_region: TileRegion, in_shape: FeatureShape) -> list[OpWork]:
        out_elements = self.output_shape(in_shape).channels * out_region.area
        in_elements = in_shape.channels * self.input_region(out_region, in_shape).area
        return [
            OpWork(
                kind=self.kind,
                flops=self._flops_per_output() * out_elements,
                bytes=(in_elements + out_elements) * BYTES_PER_ELEMENT,
                depth=self._depth(),
                pixels=out_region.area,
            )
        ]


@dataclass(frozen=True, kw_only=True)
class ConvStage(WindowStage):
    kind: ClassVar[str] = "conv"
    in_channels: int
    out_channels: int
    groups: int = 1
    bias: bool = True

    weighted: ClassVar[bool] = True
    layers: ClassVar[int] = 1

    def output_channels(self, in_channels: int) -> int:
        return self.out_channels

    def _depth(self) -> int:
        rows, cols = self.windows
        return (self.in_channels // self.groups) * rows.kernel * cols.kernel

    def _flops_per_output(self) -> int:
        return 2 * self._depth() + (1 if self.bias else 0)


@dataclass(frozen=True, kw_only=True)
class BatchNormStage(WindowStage):
    """Inference-mode batch norm: a per-channel affine map with the running statistics."""

    kind: ClassVar[str] = "bn"

    def _flops_per_output(self) -> int:
        return 2


@dataclass(frozen=True, kw_only=True)
class ReLUStage(WindowStage):
    kind: ClassVar[str] = "relu"

    def _flops_per_output(self) -> int:
        return 1


@dataclass(frozen=True, kw_only=True)
class MaxPoolStage(WindowStage):
    kind: ClassVar[str] = "maxpool"
    layers: ClassVar[int] = 1

    def _flops_per_output(self) -> int:
        return self._depth()

    def _depth(self) -> int:
        rows, cols = self.windows
        return rows.kernel * cols.kernel


@dataclass(frozen=True, kw_only=True)
class AvgPoolStage(WindowStage):
    """Average pooling; the divisor options change its values, not its geometry or cost."""

    kind: ClassVar[str] = "avgpool"
    layers: ClassVar[int] = 1
    count_include_pad: bool = True
    divisor_override: int | None = None

    def _flops_per_output(self) -> int:
        return self._depth() + 1

    def _depth(self) -> int:
        rows, cols = self.windows
        return rows.kernel * cols.kernel
