"""Converting ONNX nodes into graph ops: one function per ONNX op type.

Each takes what the reader knows (:class:`Reading`: constants, shapes, the opset) and a
node's operands and attributes, and returns the op with the operands it reads, or refuses
with why (the reader adds the node's name and type).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph import ops
from edgeci_mqtt.graph.axes import COORDINATE_MODES, NEAREST_MODES, Resample
from edgeci_mqtt.graph.builder import Array
from edgeci_mqtt.graph.onnx_fold import FOLD, axes_of

__all__ = ["CONVERT", "WHY_NOT", "Convert", "Reading"]

WHY_NOT = {
    "LSTM": "a recurrence over time, not a map",
    "GRU": "a recurrence over time, not a map",
    "RNN": "a recurrence over time, not a map",
    "Loop": "control flow: its trip count is only known at run time",
    "If": "control flow: its branch is only known at run time",
    "Scan": "control flow: its trip count is only known at run time",
    "NonMaxSuppression": "its output size depends on the data (decode detections in the tail instead)",
    "TopK": "its output depends on the whole map",
    "NonZero": "its output size depends on the data",
    "Attention": "every position reads every other one: no region of the output needs less than the whole map",
    "Softmax": "over channels of a map it is per pixel; over a map's rows or columns it reads the whole axis",
}
"""Why well-known unsupported ops cannot be tiled (the rest: no tiled kernel here)."""


class Reading(Protocol):
    """What a converter may ask of the reader."""

    consts: dict[str, Array]
    shapes: dict[str, ops.Shape]
    opset: int

    def const(self, tensor: str, what: str) -> Array: ...

    def is_map(self, tensor: str) -> bool: ...


Convert = Callable[[Reading, list[str], dict[str, Any]], tuple[ops.Op, list[str]]]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pair(values: Sequence[int] | None, default: int) -> tuple[int, int]:
    if values is None:
        return default, default
    if len(values) != 2:
        raise ModelError(f"expected 2 spatial values, got {list(values)}")
    return int(values[0]), int(values[1])


def _pads(
    reader: Reading,
    attrs: dict[str, Any],
    shape: ops.Shape,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int]:
    auto = _text(attrs.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", "VALID"):
        pads = attrs.get("pads", [0, 0, 0, 0]) if auto == "NOTSET" else [0, 0, 0, 0]
        if len(pads) != 4:
            raise ModelError(f"pads {list(pads)} are not 2-D")
        return int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3])
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ModelError(f"auto_pad {auto!r} is not supported")
    begin, end = [], []
    for n, k, s, d in zip(shape[2:], kernel, stride, dilation, strict=True):
        total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
        small = total // 2
        begin.append(small if auto == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin[0], begin[1], end[0], end[1]


def _conv(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    weight = reader.const(inputs[1], "weight")
    if weight.ndim != 4:
        raise ModelError(f"only 2-D convolutions are supported (weight of shape {list(weight.shape)})")
    shape = reader.shapes[inputs[0]]
    kernel = _pair(attrs.get("kernel_shape"), 0) if "kernel_shape" in attrs else (weight.shape[2], weight.shape[3])
    stride, dilation = _pair(attrs.get("strides"), 1), _pair(attrs.get("dilations"), 1)
    group = int(attrs.get("group", 1))
    bias = inputs[2] if len(inputs) > 2 and inputs[2] else None
    op = ops.Conv(
        weight=inputs[1],
        bias=bias,
        in_channels=weight.shape[1] * group,
        out_channels=weight.shape[0],
        kernel=kernel,
        stride=stride,
        pads=_pads(reader, attrs, shape, kernel, stride, dilation),
        dilation=dilation,
        groups=group,
    )
    return op, [inputs[0]]


def _batch_norm(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    if attrs.get("training_mode", 0):
        raise ModelError("training-mode batch norm is not inference")
    for t, what in zip(inputs[1:], ("scale", "bias", "mean", "variance"), strict=True):
        reader.const(t, what)
    op = ops.BatchNorm(
        scale=inputs[1], bias=inputs[2], mean=inputs[3], var=inputs[4], epsilon=float(attrs.get("epsilon", 1e-5))
    )
    return op, [inputs[0]]


def _activation(function: str, **defaults: float) -> Convert:
    def convert(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        values = {k: float(attrs.get(k, v)) for k, v in defaults.items()}
        return ops.Activation(function=function, **values), [inputs[0]]  # type: ignore[arg-type]

    return convert


def _clip(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    low, high = float(attrs.get("min", -math.inf)), float(attrs.get("max", math.inf))
    if len(inputs) > 1 and inputs[1]:
        low = float(reader.const(inputs[1], "minimum"))
    if len(inputs) > 2 and inputs[2]:
        high = float(reader.const(inputs[2], "maximum"))
    if low == 0.0 and math.isinf(high):
        return ops.Activation(function="relu"), [inputs[0]]
    return ops.Activation(function="clip", low=low, high=high), [inputs[0]]


def _binary(function: str) -> Convert:
    def convert(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        return ops.Binary(function=function), inputs  # type: ignore[arg-type]

    return convert


def _concat(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    rank = len(reader.shapes.get(inputs[0], (0,) * 4))
    if int(attrs["axis"]) % rank != 1:
        raise ModelError(f"concatenation along axis {attrs['axis']} (only channels, axis 1, keep maps tileable)")
    return ops.Concat(), inputs


def _pool(function: str) -> Convert:
    def convert(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        shape = reader.shapes[inputs[0]]
        kernel, stride = _pair(attrs.get("kernel_shape"), 1), _pair(attrs.get("strides"), 1)
        dilation = _pair(attrs.get("dilations"), 1)
        if function == "avg" and dilation != (1, 1):
            raise ModelError("dilated average pooling is not supported")
        if attrs.get("storage_order", 0):
            raise ModelError("column-major max pooling indices are not supported")
        op = ops.Pool(
            function=function,  # type: ignore[arg-type]
            kernel=kernel,
            stride=stride,
            pads=_pads(reader, attrs, shape, kernel, stride, dilation),
            dilation=dilation,
            ceil_mode=bool(attrs.get("ceil_mode", 0)),
            count_include_pad=bool(attrs.get("count_include_pad", 0)),
        )
        return op, [inputs[0]]

    return convert


def _global(function: str) -> Convert:
    def convert(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        return ops.GlobalPool(function=function), [inputs[0]]  # type: ignore[arg-type]

    return convert


def _reduce(function: str) -> Convert:
    def convert(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        axes = axes_of([None, *[reader.consts.get(t) for t in inputs[1:]]], attrs)
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            raise ModelError(f"a reduction over axes {axes} (only over height and width, axes 2 and 3)")
        return ops.GlobalPool(function=function), [inputs[0]]  # type: ignore[arg-type]

    return convert


def _resize(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    shape = reader.shapes[inputs[0]]
    mode = _text(attrs.get("mode", "nearest"))
    if mode not in ("nearest", "linear", "bilinear"):
        raise ModelError(f"resize mode {mode!r} is not supported (nearest and linear are)")
    if attrs.get("antialias", 0):
        raise ModelError("antialiased resizing is not supported")
    if _text(attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise ModelError("resizing that keeps the aspect ratio is not supported")
    coordinate = _text(
        attrs.get("coordinate_transformation_mode", "half_pixel" if reader.opset >= 11 else "asymmetric")
    )
    rounding = _text(attrs.get("nearest_mode", "round_prefer_floor" if reader.opset >= 11 else "floor"))
    if coordinate not in COORDINATE_MODES or rounding not in NEAREST_MODES:
        raise ModelError(f"resize coordinates {coordinate!r} / {rounding!r} are not supported")
    axes = attrs.get("axes")
    if axes is not None and sorted(a % 4 for a in axes) != [2, 3]:
        raise ModelError(f"resizing axes {list(axes)} (only height and width)")
    scales = sizes = None
    if len(inputs) == 2:  # Upsample (opset 7-9), or Resize-10: (X, scales)
        scales = reader.const(inputs[1], "scales")
    else:
        if len(inputs) > 2 and inputs[2]:
            scales = reader.const(inputs[2], "scales")
        if len(inputs) > 3 and inputs[3]:
            sizes = reader.const(inputs[3], "sizes")
    if scales is not None and scales.size:
        s = [float(v) for v in scales.ravel()]
        s = [1.0, 1.0, *s] if len(s) == 2 else s
        if len(s) != 4 or s[0] != 1.0 or s[1] != 1.0:
            raise ModelError(f"resize scales {s} change the batch or the channels")
        out = [math.floor(n * f) for n, f in zip(shape[2:], s[2:], strict=True)]
        factors = s[2:]
    elif sizes is not None:
        z = [int(v) for v in sizes.ravel()]
        z = [shape[0], shape[1], *z] if len(z) == 2 else z
        if len(z) != 4 or z[:2] != list(shape[:2]):
            raise ModelError(f"resize sizes {z} change the batch or the channels")
        out, factors = z[2:], [o / n for o, n in zip(z[2:], shape[2:], strict=True)]
    else:
        raise ModelError("a resize with neither scales nor sizes")
    interpolation = "nearest" if mode == "nearest" else "linear"
    rows, cols = (
        Resample(o, f, interpolation, coordinate, rounding)  # type: ignore[arg-type]
        for o, f in zip(out, factors, strict=True)
    )
    return ops.Resize(rows=rows, cols=cols), [inputs[0]]


def _pad(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    if _text(attrs.get("mode", "constant")) != "constant":
        raise ModelError(f"{_text(attrs['mode'])!r} padding is not supported (constant is)")
    pads = [int(p) for p in (reader.const(inputs[1], "pads").ravel() if len(inputs) > 1 else attrs["pads"])]
    value = float(reader.const(inputs[2], "value")) if len(inputs) > 2 and inputs[2] else float(attrs.get("value", 0.0))
    axes = (
        [int(a) % 4 for a in reader.const(inputs[3], "axes").ravel()] if len(inputs) > 3 and inputs[3] else [0, 1, 2, 3]
    )
    full = [0] * 8
    for i, a in enumerate(axes):
        full[a], full[a + 4] = pads[i], pads[i + len(axes)]
    if any(full[a] or full[a + 4] for a in (0, 1)):
        raise ModelError(f"padding {full} pads the batch or the channels")
    return ops.Pad(pads=(full[2], full[3], full[6], full[7]), value=value), [inputs[0]]


def _space_to_depth(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    return ops.SpaceToDepth.onnx(reader.shapes[inputs[0]][1], int(attrs["blocksize"])), [inputs[0]]


def _depth_to_space(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    return ops.DepthToSpace(block=int(attrs["blocksize"]), order=_text(attrs.get("mode", "DCR"))), [inputs[0]]  # type: ignore[arg-type]


def _gemm(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    if attrs.get("transA", 0):
        raise ModelError("a transposed first operand is not supported")
    weight = reader.const(inputs[1], "weight")
    trans = bool(attrs.get("transB", 0))
    k, m = (weight.shape[1], weight.shape[0]) if trans else weight.shape
    bias = inputs[2] if len(inputs) > 2 and inputs[2] else None
    op = ops.Gemm(
        weight=inputs[1],
        bias=bias,
        in_features=int(k),
        out_features=int(m),
        trans_b=trans,
        alpha=float(attrs.get("alpha", 1.0)),
        beta=float(attrs.get("beta", 1.0)),
    )
    return op, [inputs[0]]


def _matmul(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    weight = reader.const(inputs[1], "weight")
    if weight.ndim != 2:
        raise ModelError(f"a matrix product with a {weight.ndim}-d weight is not supported")
    return ops.MatMul(weight=inputs[1], in_features=int(weight.shape[0]), out_features=int(weight.shape[1])), [
        inputs[0]
    ]


def _softmax(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    if reader.is_map(inputs[0]):
        raise ModelError(WHY_NOT["Softmax"] + "; only a softmax in the tail is supported")
    return ops.Softmax(axis=int(attrs.get("axis", -1))), [inputs[0]]


def _tail(op_type: str) -> Convert:
    def convert(reader: Reading, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        shape = reader.shapes[inputs[0]]
        if op_type == "Flatten":
            return ops.Flatten(axis=int(attrs.get("axis", 1))), [inputs[0]]
        if op_type == "Transpose":
            return ops.Transpose(perm=tuple(int(p) for p in attrs.get("perm", reversed(range(len(shape)))))), [
                inputs[0]
            ]
        out = np.zeros(shape, np.int8)
        folded = FOLD[op_type]([out, *[reader.consts.get(t) if t else None for t in inputs[1:]]], attrs)
        return ops.Reshape(shape=tuple(int(d) for d in folded.shape)), [inputs[0]]

    return convert


CONVERT: dict[str, Convert] = {
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "Relu": _activation("relu"),
    "LeakyRelu": _activation("leaky_relu", alpha=0.01),
    "Sigmoid": _activation("sigmoid"),
    "HardSigmoid": _activation("hard_sigmoid", alpha=0.2, beta=0.5),
    "HardSwish": _activation("hard_swish"),
    "Tanh": _activation("tanh"),
    "Clip": _clip,
    "Add": _binary("add"),
    "Sub": _binary("sub"),
    "Mul": _binary("mul"),
    "Div": _binary("div"),
    "Concat": _concat,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global("mean"),
    "GlobalMaxPool": _global("max"),
    "ReduceMean": _reduce("mean"),
    "ReduceMax": _reduce("max"),
    "Resize": _resize,
    "Upsample": _resize,
    "Pad": _pad,
    "SpaceToDepth": _space_to_depth,
    "DepthToSpace": _depth_to_space,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Softmax": _softmax,
    "Flatten": _tail("Flatten"),
    "Reshape": _tail("Reshape"),
    "Transpose": _tail("Transpose"),
    "Squeeze": _tail("Squeeze"),
    "Unsqueeze": _tail("Unsqueeze"),
}
