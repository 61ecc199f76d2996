"""The ops a graph is made of, as plain data: their shapes, their axes, their work.

An op is what a node computes, with its attributes resolved to integers (pads, scales,
block sizes) for the graph's fixed input size; its weights are named, never held (the
graph's weights table holds them; :mod:`edgeci_mqtt.graph.torch_ops` runs the ops). Two
families:

- **spatial** ops map (1, C, H, W) maps to a map: per input and per axis an
  :class:`~edgeci_mqtt.graph.axes.Axis` says which input rows and columns an output
  region reads, which is all region propagation needs;
- **tail** ops (``Flatten``, ``Gemm``, ``MatMul``, ``Reshape``, ``Transpose``,
  ``Softmax``) come after the last map and run where the tail runs, on the whole tensor.

Shapes are full tensor shapes (``(1, C, H, W)`` for a map); the batch is always 1.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from edgeci_mqtt.core.geometry import Window
from edgeci_mqtt.core.stages import BYTES_PER_ELEMENT
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph.axes import Axis, Broadcast, Resample, Whole

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "BatchNorm",
    "Binary",
    "Concat",
    "Conv",
    "DepthToSpace",
    "Flatten",
    "Gemm",
    "GlobalPool",
    "MatMul",
    "Op",
    "Pad",
    "Pool",
    "Reshape",
    "Resize",
    "Shape",
    "Softmax",
    "SpaceToDepth",
    "SpatialOp",
    "TailActivation",
    "TailOp",
    "Transpose",
    "as_map",
    "is_map",
]

Shape = tuple[int, ...]
Axes = tuple[Axis, Axis]
"""Rows and columns of one input."""
Windows = tuple[Window, Window]


def is_map(shape: Shape) -> bool:
    """A single (1, C, H, W) feature map."""
    return len(shape) == 4 and shape[0] == 1


def _map(shape: Shape, op: Op, what: str = "input") -> tuple[int, int, int]:
    if not is_map(shape):
        raise ModelError(f"{op.kind}: {what} of shape {list(shape)} is not a (1, C, H, W) map")
    return shape[1], shape[2], shape[3]


@dataclass(frozen=True, kw_only=True)
class Op(ABC):
    """What a node computes. ``inputs`` of the node are the op's operands in order."""

    kind: ClassVar[str]
    spatial: ClassVar[bool]
    arity: ClassVar[tuple[int, int]] = (1, 1)
    """Least and most operands."""

    @abstractmethod
    def infer(self, shapes: Sequence[Shape]) -> Shape:
        """The output shape for operands of these shapes (:class:`ModelError` if they do not fit)."""

    def weights(self) -> tuple[str, ...]:
        """Names of the weights it reads (in the graph's weights table)."""
        return ()


@dataclass(frozen=True, kw_only=True)
class SpatialOp(Op):
    """An op from maps to a map, tileable: any output region needs a region of each operand."""

    spatial: ClassVar[bool] = True
    priced_as: ClassVar[str] = "add"
    """The profile's kind of op whose rate prices this one (:class:`~edgeci_mqtt.core.profile.DeviceProfile`
    measures convolutions, pools and memory-bound elementwise work; ops without a rate of
    their own move memory like an add)."""

    def axes(self, shapes: Sequence[Shape]) -> tuple[Axes, ...]:
        """Per operand, its rows and columns as seen from the output (same-size by default)."""
        out = self.infer(shapes)
        return tuple(_pointwise(shape, out) for shape in shapes)

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        """Floating-point operations per output element (multiply-add = 2)."""
        return 1

    @property
    def profile_kind(self) -> str:
        return self.priced_as

    def depth(self, shapes: Sequence[Shape]) -> int:
        """Input elements reduced into one output element (0: pointwise)."""
        return 0

    def work(self, shapes: Sequence[Shape], out_area: int, in_areas: Sequence[int]) -> OpWork:
        """The cost of an output region of ``out_area`` pixels reading ``in_areas`` of each operand."""
        out = self.infer(shapes)
        out_elements = out[1] * out_area
        moved = out_elements + sum(s[1] * a for s, a in zip(shapes, in_areas, strict=True))
        return OpWork(
            kind=self.profile_kind,
            flops=self.flops_per_output(shapes) * out_elements,
            bytes=moved * BYTES_PER_ELEMENT,
            depth=self.depth(shapes),
            pixels=out_area,
        )


def as_map(shape: Shape) -> Shape:
    """A constant's shape as numpy broadcasting aligns it with a map (leading 1s)."""
    return (1,) * (4 - len(shape)) + tuple(shape)


def _pointwise(shape: Shape, out: Shape) -> Axes:
    """An operand's axes under broadcasting to ``out`` (length 1 stretched, else the same)."""
    rows = Broadcast(out[2]) if shape[2] == 1 and out[2] != 1 else Window()
    cols = Broadcast(out[3]) if shape[3] == 1 and out[3] != 1 else Window()
    return rows, cols


def _windows(
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int] = (1, 1),
    ceil_mode: bool = False,
) -> Windows:
    """ONNX's attributes (``pads`` as top, left, bottom, right) as one window per axis."""
    top, left, bottom, right = pads
    return (
        Window(kernel[0], stride[0], top, dilation[0], ceil_mode, bottom),
        Window(kernel[1], stride[1], left, dilation[1], ceil_mode, right),
    )


def _windowed(op: SpatialOp, shape: Shape, rows: Window, cols: Window, channels: int) -> Shape:
    _, h, w = _map(shape, op)
    out = (1, channels, rows.output_size(h), cols.output_size(w))
    if out[2] < 1 or out[3] < 1:
        raise ModelError(f"{op.kind}: a {h}x{w} input is too small for its window ({rows}, {cols})")
    return out


@dataclass(frozen=True, kw_only=True)
class Conv(SpatialOp):
    """A 2-D convolution (grouped and depthwise included); ``pads`` are top, left, bottom, right."""

    kind: ClassVar[str] = "conv"
    priced_as: ClassVar[str] = "conv"
    weight: str
    bias: str | None
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ModelError(f"conv: {self.in_channels} -> {self.out_channels} channels in {self.groups} groups")

    @property
    def windows(self) -> Windows:
        return _windows(self.kernel, self.stride, self.pads, self.dilation)

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        c, _, _ = _map(shapes[0], self)
        if c != self.in_channels:
            raise ModelError(f"conv: takes {self.in_channels} channels, got {c}")
        return _windowed(self, shapes[0], *self.windows, self.out_channels)

    def axes(self, shapes: Sequence[Shape]) -> tuple[Axes, ...]:
        return (self.windows,)

    def depth(self, shapes: Sequence[Shape]) -> int:
        return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        return 2 * self.depth(shapes) + (1 if self.bias else 0)

    def weights(self) -> tuple[str, ...]:
        return (self.weight,) + ((self.bias,) if self.bias else ())


@dataclass(frozen=True, kw_only=True)
class BatchNorm(SpatialOp):
    """Inference batch norm: ``(x - mean) / sqrt(var + epsilon) * scale + bias`` per channel."""

    kind: ClassVar[str] = "bn"
    priced_as: ClassVar[str] = "bn"
    scale: str
    bias: str
    mean: str
    var: str
    epsilon: float = 1e-5

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        _map(shapes[0], self)
        return shapes[0]

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        return 2

    def weights(self) -> tuple[str, ...]:
        return (self.scale, self.bias, self.mean, self.var)


ACTIVATIONS = ("relu", "clip", "leaky_relu", "sigmoid", "hard_sigmoid", "hard_swish", "silu", "tanh")


@dataclass(frozen=True, kw_only=True)
class Activation(SpatialOp):
    """An elementwise function of one map: ``clip`` between ``low`` and ``high`` (ReLU6);
    ``leaky_relu`` with slope ``alpha``; ``hard_sigmoid`` as ``max(0, min(1, alpha*x + beta))``."""

    kind: ClassVar[str] = "act"
    priced_as: ClassVar[str] = "relu"
    function: Literal["relu", "clip", "leaky_relu", "sigmoid", "hard_sigmoid", "hard_swish", "silu", "tanh"]
    alpha: float = 0.0
    beta: float = 0.0
    low: float = -math.inf
    high: float = math.inf

    def __post_init__(self) -> None:
        if self.function not in ACTIVATIONS:
            raise ModelError(f"activation {self.function!r} is not supported")

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        _map(shapes[0], self)
        return shapes[0]

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        return 1 if self.function in ("relu", "clip", "leaky_relu") else 4


@dataclass(frozen=True, kw_only=True)
class Binary(SpatialOp):
    """``a (op) b`` with numpy broadcasting; operands are maps or constants in the
    weights table, and an operand whose rows or columns are 1 is stretched
    (a squeeze-excitation gate)."""

    kind: ClassVar[str] = "binary"
    arity: ClassVar[tuple[int, int]] = (2, 2)
    function: Literal["add", "sub", "mul", "div"]

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        a, b = (as_map(s) for s in shapes)
        if len(a) != 4 or len(b) != 4:
            raise ModelError(f"{self.function}: operands {list(shapes[0])} and {list(shapes[1])} are not maps")
        out = []
        for x, y in zip(a, b, strict=True):
            if x != y and 1 not in (x, y):
                raise ModelError(f"{self.function}: shapes {list(shapes[0])} and {list(shapes[1])} do not broadcast")
            out.append(max(x, y))
        if out[0] != 1:
            raise ModelError(f"{self.function}: a batch of {out[0]} is not one map")
        return tuple(out)

    def axes(self, shapes: Sequence[Shape]) -> tuple[Axes, ...]:
        out = self.infer(shapes)
        return tuple(_pointwise(as_map(s), out) for s in shapes)


@dataclass(frozen=True, kw_only=True)
class Concat(SpatialOp):
    """Maps of equal height and width stacked along the channels."""

    kind: ClassVar[str] = "concat"
    arity: ClassVar[tuple[int, int]] = (1, 1 << 16)

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        sizes = {_map(s, self)[1:] for s in shapes}
        if len(sizes) != 1:
            raise ModelError(f"concat: maps of different sizes {sorted(sizes)} (only channels may differ)")
        return (1, sum(s[1] for s in shapes), *next(iter(sizes)))

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        return 0


@dataclass(frozen=True, kw_only=True)
class Pool(SpatialOp):
    """Max or average pooling with ONNX's attributes (``pads`` top, left, bottom, right)."""

    kind: ClassVar[str] = "pool"
    function: Literal["max", "avg"]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = False

    @property
    def windows(self) -> Windows:
        return _windows(self.kernel, self.stride, self.pads, self.dilation, self.ceil_mode)

    @property
    def profile_kind(self) -> str:
        return "maxpool" if self.function == "max" else "avgpool"

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        return _windowed(self, shapes[0], *self.windows, shapes[0][1])

    def axes(self, shapes: Sequence[Shape]) -> tuple[Axes, ...]:
        return (self.windows,)

    def depth(self, shapes: Sequence[Shape]) -> int:
        return self.kernel[0] * self.kernel[1]

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        return self.depth(shapes) + (1 if self.function == "avg" else 0)


@dataclass(frozen=True, kw_only=True)
class GlobalPool(SpatialOp):
    """Mean or max over the whole height and width: a 1x1 map (a reduction that drops the
    axes is this and a tail reshape)."""

    kind: ClassVar[str] = "global"
    function: Literal["mean", "max"]

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        c, _, _ = _map(shapes[0], self)
        return (1, c, 1, 1)

    def axes(self, shapes: Sequence[Shape]) -> tuple[Axes, ...]:
        return ((Whole(), Whole()),)

    def depth(self, shapes: Sequence[Shape]) -> int:
        return shapes[0][2] * shapes[0][3]

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        return self.depth(shapes)


@dataclass(frozen=True, kw_only=True)
class Resize(SpatialOp):
    """A resize of height and width (nearest or linear), one :class:`Resample` per axis."""

    kind: ClassVar[str] = "resize"
    rows: Resample
    cols: Resample

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        c, _, _ = _map(shapes[0], self)
        return (1, c, self.rows.size, self.cols.size)

    def axes(self, shapes: Sequence[Shape]) -> tuple[Axes, ...]:
        return ((self.rows, self.cols),)

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        return 1 if self.rows.interpolation == "nearest" else 9


@dataclass(frozen=True, kw_only=True)
class Pad(SpatialOp):
    """Constant padding of height and width (``pads`` top, left, bottom, right)."""

    kind: ClassVar[str] = "pad"
    pads: tuple[int, int, int, int]
    value: float = 0.0

    def __post_init__(self) -> None:
        if min(self.pads) < 0:
            raise ModelError(f"pad: negative pads {list(self.pads)} (cropping) are not supported")

    @property
    def windows(self) -> Windows:
        return _windows((1, 1), (1, 1), self.pads)

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        return _windowed(self, shapes[0], *self.windows, shapes[0][1])

    def axes(self, shapes: Sequence[Shape]) -> tuple[Axes, ...]:
        return (self.windows,)

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        return 0


@dataclass(frozen=True, kw_only=True)
class SpaceToDepth(SpatialOp):
    """Each ``block`` x ``block`` cell of the input becomes one pixel of ``block**2`` times
    the channels; ``sources[k]`` is ``(channel, dy, dx)`` of the input output channel ``k``
    reads (ONNX's order and YOLOv2's reorg differ only in this table)."""

    kind: ClassVar[str] = "s2d"
    block: int
    sources: tuple[tuple[int, int, int], ...]

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        c, h, w = _map(shapes[0], self)
        b = self.block
        if h % b or w % b:
            raise ModelError(f"space-to-depth: a {h}x{w} map is not a multiple of the block {b}")
        if len(self.sources) != c * b * b or any(
            not (0 <= s[0] < c and 0 <= s[1] < b and 0 <= s[2] < b) for s in self.sources
        ):
            raise ModelError(f"space-to-depth: its channel table does not fit {c} channels in blocks of {b}")
        return (1, c * b * b, h // b, w // b)

    def axes(self, shapes: Sequence[Shape]) -> tuple[Axes, ...]:
        return ((Window(self.block, self.block), Window(self.block, self.block)),)

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        return 0

    @classmethod
    def onnx(cls, channels: int, block: int) -> SpaceToDepth:
        """ONNX ``SpaceToDepth``: output channel ``(dy * block + dx) * channels + c``."""
        return cls(
            block=block,
            sources=tuple((c, dy, dx) for dy in range(block) for dx in range(block) for c in range(channels)),
        )


@dataclass(frozen=True, kw_only=True)
class DepthToSpace(SpatialOp):
    """ONNX ``DepthToSpace``: each pixel's channels become a ``block`` x ``block`` cell.
    ``DCR``: output channel ``c`` at cell ``(dy, dx)`` reads input channel
    ``(dy * block + dx) * C + c``; ``CRD``: ``c * block**2 + dy * block + dx``."""

    kind: ClassVar[str] = "d2s"
    block: int
    order: Literal["DCR", "CRD"] = "DCR"

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        c, h, w = _map(shapes[0], self)
        if c % (self.block * self.block):
            raise ModelError(f"depth-to-space: {c} channels are not a multiple of {self.block}**2")
        return (1, c // self.block**2, h * self.block, w * self.block)

    def axes(self, shapes: Sequence[Shape]) -> tuple[Axes, ...]:
        out = self.infer(shapes)
        up = [Resample(size, float(self.block), "nearest", "asymmetric", "floor") for size in out[2:]]
        return ((up[0], up[1]),)

    def flops_per_output(self, shapes: Sequence[Shape]) -> int:
        return 0


@dataclass(frozen=True, kw_only=True)
class TailOp(Op):
    """An op after the last map, run on whole tensors where the tail runs."""

    spatial: ClassVar[bool] = False

    def flops(self, shapes: Sequence[Shape]) -> int:
        """Floating-point operations of the whole op."""
        return math.prod(self.infer(shapes))


@dataclass(frozen=True, kw_only=True)
class TailActivation(TailOp):
    """An :class:`Activation` on a tail tensor (a ReLU between fully connected layers)."""

    kind: ClassVar[str] = "tail-act"
    activation: Activation

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        return shapes[0]


@dataclass(frozen=True, kw_only=True)
class Flatten(TailOp):
    kind: ClassVar[str] = "flatten"
    axis: int = 1

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        shape, axis = shapes[0], self.axis if self.axis >= 0 else self.axis + len(shapes[0])
        if not 0 <= axis <= len(shape):
            raise ModelError(f"flatten: axis {self.axis} of a {len(shape)}-d tensor")
        return (math.prod(shape[:axis]), math.prod(shape[axis:]))


@dataclass(frozen=True, kw_only=True)
class Reshape(TailOp):
    kind: ClassVar[str] = "reshape"
    shape: tuple[int, ...]

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        if math.prod(self.shape) != math.prod(shapes[0]):
            raise ModelError(f"reshape: {list(shapes[0])} cannot become {list(self.shape)}")
        return self.shape


@dataclass(frozen=True, kw_only=True)
class Transpose(TailOp):
    kind: ClassVar[str] = "transpose"
    perm: tuple[int, ...]

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        if sorted(self.perm) != list(range(len(shapes[0]))):
            raise ModelError(f"transpose: permutation {list(self.perm)} of a {len(shapes[0])}-d tensor")
        return tuple(shapes[0][p] for p in self.perm)


@dataclass(frozen=True, kw_only=True)
class Softmax(TailOp):
    kind: ClassVar[str] = "softmax"
    axis: int = -1

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        return shapes[0]


@dataclass(frozen=True, kw_only=True)
class Gemm(TailOp):
    """``alpha * a @ W' + beta * bias`` with ``W'`` the weight, transposed if ``trans_b``
    (a fully connected layer: ``a`` is (1, K))."""

    kind: ClassVar[str] = "gemm"
    weight: str
    bias: str | None
    in_features: int
    out_features: int
    trans_b: bool = True
    alpha: float = 1.0
    beta: float = 1.0

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        if len(shapes[0]) != 2 or shapes[0][1] != self.in_features:
            raise ModelError(f"gemm: takes (N, {self.in_features}), got {list(shapes[0])}")
        return (shapes[0][0], self.out_features)

    def flops(self, shapes: Sequence[Shape]) -> int:
        return 2 * shapes[0][0] * self.in_features * self.out_features

    def weights(self) -> tuple[str, ...]:
        return (self.weight,) + ((self.bias,) if self.bias else ())


@dataclass(frozen=True, kw_only=True)
class MatMul(TailOp):
    """``a @ W`` with a constant (K, M) weight."""

    kind: ClassVar[str] = "matmul"
    weight: str
    in_features: int
    out_features: int

    def infer(self, shapes: Sequence[Shape]) -> Shape:
        if not shapes[0] or shapes[0][-1] != self.in_features:
            raise ModelError(f"matmul: takes (..., {self.in_features}), got {list(shapes[0])}")
        return (*shapes[0][:-1], self.out_features)

    def flops(self, shapes: Sequence[Shape]) -> int:
        return 2 * math.prod(shapes[0]) * self.out_features

    def weights(self) -> tuple[str, ...]:
        return (self.weight,)
