"""Stages executed with torch: a kernel computes any output tile of its stage.

A kernel pairs a stage's geometry (:mod:`edgeci_mqtt.core.stages`, plain data) with
the torch module holding its weights (a reference, so loaded weights are shared,
never copied), and builds that geometry from the module. Why two types rather than
stages that run themselves: the planner, the simulator and a device validating a task
need only the geometry and must not pay for (or depend on) torch; execution is the one
thing that needs it, and it lives here alone.

The key operation is :meth:`Kernel.run`: given a tensor holding some input region,
produce exactly the requested output region. Padding is materialised only where the
region's reach leaves the *global* feature map (zeros for convolutions, -inf for max
pooling, the exact PyTorch divisor for average pooling); interior tile edges use the
real halo data the caller supplied. That is what makes stitched tiles equal the
whole-map result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeci_mqtt.core.chain import chain_regions, chain_shapes
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion, Window
from edgeci_mqtt.core.residual import ResidualStage
from edgeci_mqtt.core.stages import (
    AvgPoolStage,
    BatchNormStage,
    ConvStage,
    MaxPoolStage,
    ReLUStage,
    Stage,
    Windows,
    WindowStage,
)
from edgeci_mqtt.errors import GeometryError, ModelError

__all__ = [
    "AvgPoolKernel",
    "BatchNormKernel",
    "ConvKernel",
    "Kernel",
    "MaxPoolKernel",
    "ReLUKernel",
    "ResidualKernel",
    "WindowKernel",
    "padded_input",
    "pool_divisors",
    "run_chain",
]


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
    """A torch layer's arguments as one :class:`Window` per axis."""
    if isinstance(padding, str):
        raise ModelError(f"string padding {padding!r} is not supported; use explicit integers")
    k, s, p, d = _pair(kernel), _pair(stride or kernel), _pair(padding), _pair(dilation)
    return (
        Window(k[0], s[0], p[0], d[0], ceil_mode),
        Window(k[1], s[1], p[1], d[1], ceil_mode),
    )


def padded_input(
    x: Tensor, x_region: TileRegion, out_region: TileRegion, windows: Windows, height: int, width: int, fill: float
) -> Tensor:
    """``x`` (holding ``x_region`` of a ``height`` x ``width`` map) cropped to what
    ``out_region`` of a sliding-window op reads, padded with ``fill`` only where that reach
    leaves the global map. Chain kernels and graph ops both pad through here."""
    rows, cols = windows
    reach = TileRegion(rows.reach(out_region.rows), cols.reach(out_region.cols))
    need = TileRegion(rows.needed(out_region.rows, height), cols.needed(out_region.cols, width))
    r, c = need.within(x_region)
    x = x[:, :, r, c]
    if need.area == 0:  # every window lies in the padding
        return torch.full((*x.shape[:2], reach.height, reach.width), fill, dtype=x.dtype)
    pads = (
        need.cols.start - reach.cols.start,
        reach.cols.stop - need.cols.stop,
        need.rows.start - reach.rows.start,
        reach.rows.stop - need.rows.stop,
    )
    return F.pad(x, pads, value=fill) if any(pads) else x


def pool_divisors(window: Window, out: Span, n: int, include_pad: bool) -> Tensor:
    """An average pool's divisor along one axis at each output index of ``out``, as at its
    global position: the padding counted or not, the ceil-mode overhang never."""
    start = torch.arange(out.start, out.stop, dtype=torch.int64) * window.stride - window.padding
    stop = torch.clamp(start + window.kernel, max=n + window.end_padding)
    if not include_pad:
        start, stop = torch.clamp(start, min=0), torch.clamp(stop, max=n)
    return stop - start


class Kernel(ABC):
    """A stage and what runs it."""

    stage: Stage

    @abstractmethod
    def run(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        """Compute ``out_region`` from ``x``, a (N, C, h, w) tensor holding ``x_region``.

        ``x_region`` must contain the stage's input region of ``out_region``.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.stage.name!r})"


class WindowKernel(Kernel):
    """A single sliding-window or pointwise op: crop, pad at the global border, apply."""

    stage: WindowStage
    fill: float = 0.0

    def __init__(self, stage: WindowStage) -> None:
        self.stage = stage

    def _padded_input(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        return padded_input(x, x_region, out_region, self.stage.windows, in_shape.height, in_shape.width, self.fill)

    def run(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        return self._apply(self._padded_input(x, x_region, out_region, in_shape))

    @abstractmethod
    def _apply(self, x: Tensor) -> Tensor:
        """The op on an already padded input (no padding of its own)."""


class ConvKernel(WindowKernel):
    stage: ConvStage

    def __init__(self, name: str, module: nn.Conv2d) -> None:
        if module.padding_mode != "zeros":
            raise ModelError(f"{name}: padding_mode {module.padding_mode!r} is not supported")
        windows = _windows(module.kernel_size, module.stride, module.padding, module.dilation)
        super().__init__(
            ConvStage(
                name=name,
                windows=windows,
                in_channels=module.in_channels,
                out_channels=module.out_channels,
                groups=module.groups,
                bias=module.bias is not None,
            )
        )
        self.module = module

    def _apply(self, x: Tensor) -> Tensor:
        m = self.module
        return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)


class BatchNormKernel(WindowKernel):
    def __init__(self, name: str, module: nn.BatchNorm2d) -> None:
        super().__init__(BatchNormStage(name=name))
        self.module = module

    def _apply(self, x: Tensor) -> Tensor:
        m = self.module
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


class ReLUKernel(WindowKernel):
    def __init__(self, name: str) -> None:
        super().__init__(ReLUStage(name=name))

    def _apply(self, x: Tensor) -> Tensor:
        return torch.relu(x)  # never in place: x may be a view of a shared map


class MaxPoolKernel(WindowKernel):
    fill = float("-inf")

    def __init__(self, name: str, module: nn.MaxPool2d) -> None:
        if module.return_indices:
            raise ModelError(f"{name}: max pooling that returns indices is not supported")
        windows = _windows(module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)
        super().__init__(MaxPoolStage(name=name, windows=windows))

    def _apply(self, x: Tensor) -> Tensor:
        rows, cols = self.stage.windows
        return F.max_pool2d(
            x, (rows.kernel, cols.kernel), (rows.stride, cols.stride), 0, (rows.dilation, cols.dilation)
        )


class AvgPoolKernel(WindowKernel):
    """Average pooling: windows are summed on the zero-padded tile, then divided by
    the divisor PyTorch would use at that *global* position (padding counted or not,
    the ceil-mode overhang never)."""

    stage: AvgPoolStage

    def __init__(self, name: str, module: nn.AvgPool2d) -> None:
        windows = _windows(module.kernel_size, module.stride, module.padding, 1, module.ceil_mode)
        super().__init__(
            AvgPoolStage(
                name=name,
                windows=windows,
                count_include_pad=module.count_include_pad,
                divisor_override=module.divisor_override,
            )
        )

    def _apply(self, x: Tensor) -> Tensor:
        rows, cols = self.stage.windows
        return F.avg_pool2d(x, (rows.kernel, cols.kernel), (rows.stride, cols.stride), 0, divisor_override=1)

    def run(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        sums = self._apply(self._padded_input(x, x_region, out_region, in_shape))
        if self.stage.divisor_override is not None:
            return sums / self.stage.divisor_override
        rows, cols = self.stage.windows
        include = self.stage.count_include_pad
        row_div = pool_divisors(rows, out_region.rows, in_shape.height, include)
        col_div = pool_divisors(cols, out_region.cols, in_shape.width, include)
        return sums / (row_div[:, None] * col_div[None, :]).to(sums.dtype)


class ResidualKernel(Kernel):
    """``relu(main(x) + shortcut(x))``, each path run as an ordinary chain, so padding
    inside the block is applied at the border of each intermediate map."""

    stage: ResidualStage

    def __init__(self, name: str, main: Sequence[Kernel], shortcut: Sequence[Kernel] = ()) -> None:
        self.main, self.shortcut = tuple(main), tuple(shortcut)
        self.stage = ResidualStage(
            name=name, main=tuple(k.stage for k in self.main), shortcut=tuple(k.stage for k in self.shortcut)
        )

    def run(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        main = run_chain(self.main, in_shape, x, x_region, out_region)
        short = run_chain(self.shortcut, in_shape, x, x_region, out_region)
        return torch.relu(main + short)


def run_chain(
    kernels: Sequence[Kernel],
    in_shape: FeatureShape,
    x: Tensor,
    x_region: TileRegion,
    out_region: TileRegion,
) -> Tensor:
    """Compute ``out_region`` of the last stage from ``x`` holding ``x_region`` of the input."""
    stages = [k.stage for k in kernels]
    shapes = chain_shapes(stages, in_shape)
    regions = chain_regions(stages, shapes, out_region)
    if not x_region.contains(regions[0]):
        raise GeometryError(f"input tile {x_region} does not cover the needed region {regions[0]}")
    if tuple(x.shape[-2:]) != (x_region.height, x_region.width):
        raise GeometryError(f"input tensor {tuple(x.shape)} does not match its region {x_region}")
    if not kernels:  # an identity path (a residual shortcut): just the crop
        rows, cols = out_region.within(x_region)
        return x[:, :, rows, cols]
    for k, kernel in enumerate(kernels):
        x = kernel.run(x, x_region, regions[k + 1], shapes[k])
        x_region = regions[k + 1]
    return x
