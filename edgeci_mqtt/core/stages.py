"""Spatial stages: the units a CNN is cut into, each able to compute any output tile.

A stage owns its geometry (one :class:`Window` per axis) and its weights (a
reference to the torch module, so loaded weights are shared, never copied). The key
operation is :meth:`Stage.run`: given a tensor holding some input region, produce
exactly the requested output region. Padding is materialised only where the
region's reach leaves the *global* feature map (zeros for convolutions, -inf for
max pooling, the exact PyTorch divisor for average pooling); interior tile edges use
the real halo data the caller supplied. That is what makes stitched tiles equal the
whole-map result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion, Window
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import ModelError

__all__ = [
    "BYTES_PER_ELEMENT",
    "AvgPoolStage",
    "BatchNormStage",
    "ConvStage",
    "MaxPoolStage",
    "ReLUStage",
    "Stage",
    "WindowStage",
]

BYTES_PER_ELEMENT = 4
"""Feature maps are float32 everywhere (compute and wire)."""

Windows = tuple[Window, Window]
IDENTITY: Windows = (Window(), Window())


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) != 2:
        raise ModelError(f"expected an int or a pair, got {value!r}")
    return int(value[0]), int(value[1])


def _windows(
    kernel: int | tuple[int, ...],
    stride: int | tuple[int, ...] | None,
    padding: int | tuple[int, ...] | str,
    dilation: int | tuple[int, ...] = 1,
    ceil_mode: bool = False,
) -> Windows:
    if isinstance(padding, str):
        raise ModelError(f"string padding {padding!r} is not supported; use explicit integers")
    k, s, p, d = _pair(kernel), _pair(stride or kernel), _pair(padding), _pair(dilation)
    return (
        Window(k[0], s[0], p[0], d[0], ceil_mode),
        Window(k[1], s[1], p[1], d[1], ceil_mode),
    )


class Stage(ABC):
    """One spatial step of a CNN (a layer, or a whole residual block)."""

    kind: str = "stage"

    def __init__(self, name: str) -> None:
        self.name = name

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
    def run(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        """Compute ``out_region`` from ``x``, a (N, C, h, w) tensor holding ``x_region``.

        ``x_region`` must contain :meth:`input_region` of ``out_region``.
        """

    @abstractmethod
    def ops(self, out_region: TileRegion, in_shape: FeatureShape) -> list[OpWork]:
        """The primitive operations computing ``out_region``, halo inside the stage included."""

    def flops(self, out_region: TileRegion, in_shape: FeatureShape) -> int:
        """Floating-point operations to compute ``out_region`` (multiply-add = 2)."""
        return sum(op.flops for op in self.ops(out_region, in_shape))

    def output_bytes(self, out_region: TileRegion, in_shape: FeatureShape) -> int:
        """Bytes of the float32 output tile ``out_region`` for one sample."""
        return self.output_shape(in_shape).channels * out_region.area * BYTES_PER_ELEMENT

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class WindowStage(Stage):
    """A single sliding-window or pointwise op: crop, pad at the global border, apply."""

    fill: float = 0.0

    def __init__(self, name: str, windows: Windows, out_channels: int | None) -> None:
        super().__init__(name)
        self._windows = windows
        self._out_channels = out_channels  # None: same as input (pointwise, pooling)

    @property
    def windows(self) -> Windows:
        return self._windows

    def output_shape(self, in_shape: FeatureShape) -> FeatureShape:
        rows, cols = self._windows
        channels = self._out_channels if self._out_channels is not None else in_shape.channels
        return FeatureShape(channels, rows.output_size(in_shape.height), cols.output_size(in_shape.width))

    def reach(self, out_region: TileRegion) -> TileRegion:
        """Input region read by ``out_region`` before clipping (may include padding)."""
        rows, cols = self._windows
        return TileRegion(rows.reach(out_region.rows), cols.reach(out_region.cols))

    def input_region(self, out_region: TileRegion, in_shape: FeatureShape) -> TileRegion:
        rows, cols = self._windows
        return TileRegion(rows.needed(out_region.rows, in_shape.height), cols.needed(out_region.cols, in_shape.width))

    def _padded_input(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        reach = self.reach(out_region)
        need = self.input_region(out_region, in_shape)
        rows, cols = need.within(x_region)
        x = x[:, :, rows, cols]
        pads = (
            need.cols.start - reach.cols.start,
            reach.cols.stop - need.cols.stop,
            need.rows.start - reach.rows.start,
            reach.rows.stop - need.rows.stop,
        )
        if any(pads):
            x = F.pad(x, pads, value=self.fill)
        return x

    def run(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        return self._apply(self._padded_input(x, x_region, out_region, in_shape))

    @abstractmethod
    def _apply(self, x: Tensor) -> Tensor:
        """The op on an already padded input (no padding of its own)."""

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


class ConvStage(WindowStage):
    kind = "conv"

    def __init__(self, name: str, module: nn.Conv2d) -> None:
        if module.padding_mode != "zeros":
            raise ModelError(f"{name}: padding_mode {module.padding_mode!r} is not supported")
        super().__init__(
            name,
            _windows(module.kernel_size, module.stride, module.padding, module.dilation),
            module.out_channels,
        )
        self.module = module

    def _apply(self, x: Tensor) -> Tensor:
        m = self.module
        return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)

    def _depth(self) -> int:
        m = self.module
        return (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def _flops_per_output(self) -> int:
        return 2 * self._depth() + (1 if self.module.bias is not None else 0)


class BatchNormStage(WindowStage):
    """Inference-mode batch norm: a per-channel affine map with the running statistics."""

    kind = "bn"

    def __init__(self, name: str, module: nn.BatchNorm2d) -> None:
        super().__init__(name, IDENTITY, None)
        self.module = module

    def _apply(self, x: Tensor) -> Tensor:
        m = self.module
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    def _flops_per_output(self) -> int:
        return 2


class ReLUStage(WindowStage):
    kind = "relu"

    def __init__(self, name: str) -> None:
        super().__init__(name, IDENTITY, None)

    def _apply(self, x: Tensor) -> Tensor:
        return torch.relu(x)  # never in place: x may be a view of a shared map

    def _flops_per_output(self) -> int:
        return 1


class MaxPoolStage(WindowStage):
    kind = "maxpool"
    fill = float("-inf")

    def __init__(self, name: str, module: nn.MaxPool2d) -> None:
        if module.return_indices:
            raise ModelError(f"{name}: max pooling that returns indices is not supported")
        super().__init__(
            name,
            _windows(module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode),
            None,
        )

    def _apply(self, x: Tensor) -> Tensor:
        rows, cols = self.windows
        return F.max_pool2d(
            x, (rows.kernel, cols.kernel), (rows.stride, cols.stride), 0, (rows.dilation, cols.dilation)
        )

    def _flops_per_output(self) -> int:
        return self._depth()

    def _depth(self) -> int:
        rows, cols = self.windows
        return rows.kernel * cols.kernel


@dataclass(frozen=True)
class _AvgDivisor:
    count_include_pad: bool
    divisor_override: int | None


class AvgPoolStage(WindowStage):
    """Average pooling: windows are summed on the zero-padded tile, then divided by
    the divisor PyTorch would use at that *global* position (padding counted or not,
    the ceil-mode overhang never)."""

    kind = "avgpool"

    def __init__(self, name: str, module: nn.AvgPool2d) -> None:
        super().__init__(name, _windows(module.kernel_size, module.stride, module.padding, 1, module.ceil_mode), None)
        self._divisor = _AvgDivisor(module.count_include_pad, module.divisor_override)

    def _apply(self, x: Tensor) -> Tensor:
        rows, cols = self.windows
        return F.avg_pool2d(x, (rows.kernel, cols.kernel), (rows.stride, cols.stride), 0, divisor_override=1)

    def run(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        sums = self._apply(self._padded_input(x, x_region, out_region, in_shape))
        if self._divisor.divisor_override is not None:
            return sums / self._divisor.divisor_override
        rows, cols = self.windows
        row_div = self._axis_divisors(rows, out_region.rows, in_shape.height)
        col_div = self._axis_divisors(cols, out_region.cols, in_shape.width)
        return sums / (row_div[:, None] * col_div[None, :]).to(sums.dtype)

    def _axis_divisors(self, window: Window, out: Span, n: int) -> Tensor:
        start = torch.arange(out.start, out.stop, dtype=torch.int64) * window.stride - window.padding
        stop = torch.clamp(start + window.kernel, max=n + window.padding)
        if not self._divisor.count_include_pad:
            start, stop = torch.clamp(start, min=0), torch.clamp(stop, max=n)
        return stop - start

    def _flops_per_output(self) -> int:
        return self._depth() + 1

    def _depth(self) -> int:
        rows, cols = self.windows
        return rows.kernel * cols.kernel
