"""Read an ONNX file into a :class:`~edgeci_mqtt.graph.graph.Graph` at a fixed input size.

Only the graph and its initializers are read (the ``onnx`` package parses the file; the
project runs its own kernels). One pass in file order, which ONNX requires to be
topological, sorts every node into one of four fates:

- **folded**: all its operands are known constants (initializers, ``Constant`` nodes,
  ``Shape`` of a tensor whose shape is known at this input size), so it is evaluated
  here with numpy. That is what removes the shape sub-graphs exporters emit in front of
  ``Resize`` and ``Reshape``, with no simplifier and no runtime;
- **aliased**: ``Identity`` and inference-mode ``Dropout``;
- **viewed**: ``Reshape``/``Transpose``/``Flatten``/``Squeeze``/``Unsqueeze`` of a map
  are followed as index arrays until something uses them: a map again that is a block
  gather (YOLOv2's reorg) becomes a :class:`~edgeci_mqtt.graph.ops.SpaceToDepth`, an
  unchanged layout an alias, and the tail gets the original nodes;
- **converted** to an op of :mod:`edgeci_mqtt.graph.ops`, or refused with the node's
  name, type and why it cannot be tiled, before anything is sent anywhere.

Files are bounded (:data:`MAX_FILE_BYTES`), external data must stay inside the model's
directory, and dynamic heights and widths need ``size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph import ops
from edgeci_mqtt.graph.axes import COORDINATE_MODES, NEAREST_MODES, Resample
from edgeci_mqtt.graph.builder import Array, GraphBuilder
from edgeci_mqtt.graph.graph import Graph

__all__ = ["MAX_FILE_BYTES", "MAX_FOLDED", "OPSETS", "read_onnx"]

MAX_FILE_BYTES = 1 << 31
"""Largest model file (and external data) read: 2 GiB, protobuf's own limit."""
MAX_FOLDED = 1 << 24
"""Most elements a folded constant may have: shape arithmetic makes a few; a file that asks
for more is refused before the memory is taken."""
OPSETS = range(7, 22)
"""Versions of the default ONNX domain read (the exporters of the last years emit 13-21)."""

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


def read_onnx(
    path: Path | str, size: tuple[int, int] | None = None, name: str | None = None
) -> tuple[Graph, dict[str, Array]]:
    """The graph of the ONNX file at ``path`` and its weights, at input ``size`` (height,
    width; required if the file leaves them dynamic, else checked against it)."""
    import onnx  # only an importer needs it

    path = Path(path)
    try:
        length = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    if length > MAX_FILE_BYTES:
        raise ModelError(f"{path}: {length} bytes is larger than the {MAX_FILE_BYTES} a model file may have")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError, and others for truncated files
        raise ModelError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    _load_external(model, path)
    return _Reader(model, name or path.stem, size).read()


def _load_external(model: Any, path: Path) -> None:
    """Load external tensor data, refusing locations outside the model's directory."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    base = path.resolve().parent
    total = 0
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if not location or Path(location).is_absolute() or base not in target.parents:
            raise ModelError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the model's directory"
            )
        if not target.is_file():
            raise ModelError(f"{path}: tensor {tensor.name!r}: external data {location!r} is missing")
        total += int(info.get("length", target.stat().st_size))
        if total > MAX_FILE_BYTES:
            raise ModelError(f"{path}: its external data is larger than {MAX_FILE_BYTES} bytes")
    try:
        load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise ModelError(f"{path}: cannot load its external data ({exc})") from exc


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Reader:
    def __init__(self, model: Any, name: str, size: tuple[int, int] | None) -> None:
        self.model, self.name, self.size = model, name, size
        self.graph = GraphBuilder(name)
        self.consts, self.shapes = self.graph.consts, self.graph.shapes
        self.opset = 0

    def read(self) -> tuple[Graph, dict[str, Array]]:
        from onnx import numpy_helper

        graph = self.model.graph
        self._check_opsets()
        for tensor in graph.initializer:
            self.graph.constant(tensor.name, numpy_helper.to_array(tensor))
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ModelError(f"{self.name}: the model takes {len(inputs)} inputs; EdgeCI splits models of one image")
        self.graph.set_input(inputs[0].name, self._input_shape(inputs[0]))
        for index, node in enumerate(graph.node):
            label = node.name or f"{node.op_type}_{index}"
            try:
                self._node(node, label)
            except ModelError as exc:
                raise ModelError(f"{self.name}: node {label!r} ({node.op_type}): {exc}") from exc
        return self.graph.build([self._output(o) for o in graph.output])

    def _check_opsets(self) -> None:
        for entry in self.model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                self.opset = int(entry.version)
        if self.opset not in OPSETS:
            raise ModelError(
                f"{self.name}: opset {self.opset or '(none)'} of the default domain is not read "
                f"(supported: {OPSETS.start}-{OPSETS.stop - 1})"
            )

    def _input_shape(self, value: Any) -> ops.Shape:
        from onnx import TensorProto

        tensor = value.type.tensor_type
        if tensor.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            raise ModelError(f"{self.name}: input {value.name!r} is not a floating-point tensor")
        dims = [(d.dim_value if d.HasField("dim_value") else None) for d in tensor.shape.dim]
        if len(dims) != 4:
            raise ModelError(f"{self.name}: input {value.name!r} has {len(dims)} dimensions, not (N, C, H, W)")
        batch, channels, height, width = dims
        if batch not in (None, 1) or channels is None:
            raise ModelError(
                f"{self.name}: input {value.name!r} must be one image with a fixed channel count, got {dims}"
            )
        if self.size is not None:
            if (height, width) != (None, None) and (height, width) != tuple(self.size):
                raise ModelError(
                    f"{self.name}: the file fixes its input at {height}x{width}, not {self.size[0]}x{self.size[1]}"
                )
            height, width = self.size
        if height is None or width is None or height < 1 or width < 1:
            raise ModelError(
                f"{self.name}: input {value.name!r} has a dynamic height or width; give the size to "
                "read it at (for example --input-size 224)"
            )
        return (1, channels, height, width)

    def _output(self, value: Any) -> str:
        tensor = self.graph.output(value.name)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        got = self.shapes[tensor]
        if dims and (len(dims) != len(got) or any(d is not None and d != g for d, g in zip(dims, got, strict=False))):
            raise ModelError(f"{self.name}: output {value.name!r} is declared {dims} but computes {list(got)}")
        return tensor

    def _node(self, node: Any, label: str) -> None:
        op_type = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise ModelError(f"op {op_type} of domain {node.domain!r} is not supported")
        inputs = [self.graph.resolve(t) if t else "" for t in node.input]
        attrs = _attrs(node)
        if op_type == "Constant":
            self.graph.constant(node.output[0], self._constant(attrs))
            return
        if op_type in ("Identity", "Dropout"):
            if len(node.output) > 1 and node.output[1] and self._used(node.output[1]):
                raise ModelError("its mask output is used: only inference-mode dropout is supported")
            self.graph.alias(node.output[0], inputs[0])
            return
        if op_type == "Shape":
            shape = self.graph.shape_of(inputs[0])
            start, end = attrs.get("start", 0), attrs.get("end", len(shape))
            self.graph.constant(node.output[0], np.array(shape[slice(start, end)], dtype=np.int64))
            return
        if all(t == "" or t in self.consts for t in inputs) and op_type in _FOLD:
            try:
                folded = _FOLD[op_type](self, [self.consts.get(t) for t in inputs], attrs)
            except (ValueError, IndexError, TypeError) as exc:
                raise ModelError(f"cannot evaluate it on its constant operands: {exc}") from exc
            self.graph.constant(node.output[0], folded)
            return
        if op_type in _VIEWS and (self.graph.is_viewed(inputs[0]) or self._is_map(inputs[0])):
            self._view(node, label, op_type, inputs, attrs)
            return
        tail = op_type in _TAIL_USERS
        inputs = [self.graph.operand(t, tail) if t else "" for t in inputs]
        convert = _CONVERT.get(op_type)
        if convert is None:
            raise ModelError(f"unsupported op {op_type}: " + WHY_NOT.get(op_type, "EdgeCI has no tiled kernel for it"))
        op, operands = convert(self, inputs, attrs)
        if op_type.startswith("Reduce") and not attrs.get("keepdims", 1):  # a 1x1 map, then its axes dropped
            kept = f"{node.output[0]}:kept"
            self.graph.emit(label, op, operands, kept)
            self.graph.emit(f"{label}:drop", ops.Reshape(shape=self.shapes[kept][:2]), [kept], node.output[0])
        else:
            self.graph.emit(label, op, operands, node.output[0])
        for extra in node.output[1:]:
            if extra and self._used(extra):
                raise ModelError(f"its output {extra!r} is used; only the first output of {op_type} is supported")

    def _view(self, node: Any, label: str, op_type: str, inputs: list[str], attrs: dict[str, Any]) -> None:
        rest = [self.consts.get(t) if t else None for t in inputs[1:]]
        perm = [int(p) for p in attrs.get("perm", range(3, -1, -1))] if op_type == "Transpose" else None

        def fold(index: Array) -> Array:
            return _FOLD[op_type](self, [index, *rest], attrs)

        self.graph.view(label, inputs[0], node.output[0], fold, perm)

    def _used(self, tensor: str) -> bool:
        graph = self.model.graph
        return any(tensor in n.input for n in graph.node) or any(o.name == tensor for o in graph.output)

    def _is_map(self, tensor: str) -> bool:
        return self.graph.is_map(tensor)

    def _const(self, tensor: str, what: str) -> Array:
        return self.graph.const(tensor, what)

    def _constant(self, attrs: dict[str, Any]) -> Array:
        from onnx import numpy_helper

        if "value" in attrs:
            return numpy_helper.to_array(attrs["value"])
        for key, dtype in (
            ("value_float", np.float32),
            ("value_floats", np.float32),
            ("value_int", np.int64),
            ("value_ints", np.int64),
        ):
            if key in attrs:
                return np.array(attrs[key], dtype=dtype)
        raise ModelError(f"a Constant holding {sorted(attrs)} is not supported")


# --- folding: numpy on constants (and on index arrays for views) ---------------------------------


def _axes_of(reader: _Reader, operands: Sequence[Array | None], attrs: dict[str, Any], at: int = 1) -> list[int] | None:
    if len(operands) > at and operands[at] is not None:
        return [int(a) for a in np.asarray(operands[at]).ravel()]
    return list(attrs["axes"]) if "axes" in attrs else None


def _reshape(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    data, shape = ops[0], ops[1]
    assert data is not None and shape is not None
    dims = [int(d) for d in np.asarray(shape).ravel()]
    if not attrs.get("allowzero", 0):
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return data.reshape(dims)


def _slice(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    data = ops[0]
    assert data is not None
    if len(ops) > 1:
        starts, ends = [list(np.asarray(o).ravel()) for o in ops[1:3]]
        axes = [int(a) for a in np.asarray(ops[3]).ravel()] if len(ops) > 3 and ops[3] is not None else None
        steps = [int(a) for a in np.asarray(ops[4]).ravel()] if len(ops) > 4 and ops[4] is not None else None
    else:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index: list[slice] = [slice(None)] * data.ndim
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        n = data.shape[a]
        s, e = max(min(int(s), n), -n - 1), max(min(int(e), n), -n - 1)
        index[a] = slice(s, e, st)
    return data[tuple(index)]


def _squeeze(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    data = ops[0]
    assert data is not None
    axes = _axes_of(reader, ops, attrs)
    return np.squeeze(data, axis=tuple(axes)) if axes else np.squeeze(data)


def _unsqueeze(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    data = ops[0]
    assert data is not None
    axes = _axes_of(reader, ops, attrs) or []
    rank = data.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        data = np.expand_dims(data, a)
    return data


def _flatten(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    data = ops[0]
    assert data is not None
    axis = attrs.get("axis", 1) % (data.ndim + 1) if data.ndim else 0
    return data.reshape(math.prod(data.shape[:axis]), -1)


def _elementwise(f: Callable[..., Array]) -> Callable[[_Reader, Sequence[Array | None], dict[str, Any]], Array]:
    return lambda reader, ops, attrs: f(*ops)


def _cast(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    from onnx import helper

    assert ops[0] is not None
    return ops[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))


def _gather(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    assert ops[0] is not None and ops[1] is not None
    return np.take(ops[0], ops[1].astype(np.int64), axis=attrs.get("axis", 0))


def _concat_const(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    return np.concatenate([np.atleast_1d(o) for o in ops if o is not None], axis=attrs["axis"])


def _constant_of_shape(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    from onnx import numpy_helper

    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    assert ops[0] is not None
    dims = [int(d) for d in ops[0]]
    _bounded(math.prod(dims) if all(d >= 0 for d in dims) else -1)
    return np.full(dims, value.ravel()[0], dtype=value.dtype)


def _range(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    start, limit, delta = (np.asarray(o).item() for o in ops)
    _bounded(math.ceil((limit - start) / delta) if delta else -1)
    return np.arange(start, limit, delta, dtype=np.asarray(ops[0]).dtype)


def _bounded(elements: int) -> None:
    """A constant this op would make is within :data:`MAX_FOLDED` elements (and makes sense)."""
    if not 0 <= elements <= MAX_FOLDED:
        raise ModelError(f"it would make a constant of {elements} elements (at most {MAX_FOLDED} are folded)")


def _transpose(reader: _Reader, ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    assert ops[0] is not None
    return np.transpose(ops[0], attrs.get("perm"))


def _div(a: Array, b: Array) -> Array:
    if np.asarray(a).dtype.kind in "iu" and np.asarray(b).dtype.kind in "iu":
        return np.asarray(np.trunc(np.asarray(a) / np.asarray(b)), dtype=np.result_type(a, b))
    return np.asarray(np.divide(a, b))


_FOLD: dict[str, Callable[[_Reader, Sequence[Array | None], dict[str, Any]], Array]] = {
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Gather": _gather,
    "Concat": _concat_const,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Add": _elementwise(np.add),
    "Sub": _elementwise(np.subtract),
    "Mul": _elementwise(np.multiply),
    "Div": _elementwise(_div),
    "Floor": _elementwise(np.floor),
    "Ceil": _elementwise(np.ceil),
    "Sqrt": _elementwise(np.sqrt),
    "Neg": _elementwise(np.negative),
    "Min": _elementwise(np.minimum),
    "Max": _elementwise(np.maximum),
    "Equal": _elementwise(np.equal),
    "Where": _elementwise(np.where),
}
"""Ops evaluated when all their operands are constants (shape arithmetic, mostly)."""
_VIEWS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")
_TAIL_USERS = ("Gemm", "MatMul", "Softmax", "Flatten", "Reshape", "Transpose")


# --- conversion: one ONNX node to one op -----------------------------------------------------------


def _pair(values: Sequence[int] | None, default: int) -> tuple[int, int]:
    if values is None:
        return default, default
    if len(values) != 2:
        raise ModelError(f"expected 2 spatial values, got {list(values)}")
    return int(values[0]), int(values[1])


def _pads(
    reader: _Reader,
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


def _conv(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    weight = reader._const(inputs[1], "weight")
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


def _batch_norm(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    if attrs.get("training_mode", 0):
        raise ModelError("training-mode batch norm is not inference")
    for t, what in zip(inputs[1:], ("scale", "bias", "mean", "variance"), strict=True):
        reader._const(t, what)
    op = ops.BatchNorm(
        scale=inputs[1], bias=inputs[2], mean=inputs[3], var=inputs[4], epsilon=float(attrs.get("epsilon", 1e-5))
    )
    return op, [inputs[0]]


def _activation(
    function: str, **defaults: float
) -> Callable[[_Reader, list[str], dict[str, Any]], tuple[ops.Op, list[str]]]:
    def convert(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        values = {k: float(attrs.get(k, v)) for k, v in defaults.items()}
        return ops.Activation(function=function, **values), [inputs[0]]  # type: ignore[arg-type]

    return convert


def _clip(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    low, high = float(attrs.get("min", -math.inf)), float(attrs.get("max", math.inf))
    if len(inputs) > 1 and inputs[1]:
        low = float(reader._const(inputs[1], "minimum"))
    if len(inputs) > 2 and inputs[2]:
        high = float(reader._const(inputs[2], "maximum"))
    if low == 0.0 and math.isinf(high):
        return ops.Activation(function="relu"), [inputs[0]]
    return ops.Activation(function="clip", low=low, high=high), [inputs[0]]


def _binary(function: str) -> Callable[[_Reader, list[str], dict[str, Any]], tuple[ops.Op, list[str]]]:
    def convert(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        return ops.Binary(function=function), inputs  # type: ignore[arg-type]

    return convert


def _concat(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    rank = len(reader.shapes.get(inputs[0], (0,) * 4))
    if int(attrs["axis"]) % rank != 1:
        raise ModelError(f"concatenation along axis {attrs['axis']} (only channels, axis 1, keep maps tileable)")
    return ops.Concat(), inputs


def _pool(function: str) -> Callable[[_Reader, list[str], dict[str, Any]], tuple[ops.Op, list[str]]]:
    def convert(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
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


def _global(function: str) -> Callable[[_Reader, list[str], dict[str, Any]], tuple[ops.Op, list[str]]]:
    def convert(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        return ops.GlobalPool(function=function), [inputs[0]]  # type: ignore[arg-type]

    return convert


def _reduce(function: str) -> Callable[[_Reader, list[str], dict[str, Any]], tuple[ops.Op, list[str]]]:
    def convert(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        axes = _axes_of(reader, [None, *[reader.consts.get(t) for t in inputs[1:]]], attrs)
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            raise ModelError(f"a reduction over axes {axes} (only over height and width, axes 2 and 3)")
        return ops.GlobalPool(function=function), [inputs[0]]  # type: ignore[arg-type]

    return convert


def _resize(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
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
        scales = reader._const(inputs[1], "scales")
    else:
        if len(inputs) > 2 and inputs[2]:
            scales = reader._const(inputs[2], "scales")
        if len(inputs) > 3 and inputs[3]:
            sizes = reader._const(inputs[3], "sizes")
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


def _pad(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    if _text(attrs.get("mode", "constant")) != "constant":
        raise ModelError(f"{_text(attrs['mode'])!r} padding is not supported (constant is)")
    pads = [int(p) for p in (reader._const(inputs[1], "pads").ravel() if len(inputs) > 1 else attrs["pads"])]
    value = (
        float(reader._const(inputs[2], "value")) if len(inputs) > 2 and inputs[2] else float(attrs.get("value", 0.0))
    )
    axes = (
        [int(a) % 4 for a in reader._const(inputs[3], "axes").ravel()]
        if len(inputs) > 3 and inputs[3]
        else [0, 1, 2, 3]
    )
    full = [0] * 8
    for i, a in enumerate(axes):
        full[a], full[a + 4] = pads[i], pads[i + len(axes)]
    if any(full[a] or full[a + 4] for a in (0, 1)):
        raise ModelError(f"padding {full} pads the batch or the channels")
    return ops.Pad(pads=(full[2], full[3], full[6], full[7]), value=value), [inputs[0]]


def _space_to_depth(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    return ops.SpaceToDepth.onnx(reader.shapes[inputs[0]][1], int(attrs["blocksize"])), [inputs[0]]


def _depth_to_space(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    return ops.DepthToSpace(block=int(attrs["blocksize"]), order=_text(attrs.get("mode", "DCR"))), [inputs[0]]  # type: ignore[arg-type]


def _gemm(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    if attrs.get("transA", 0):
        raise ModelError("a transposed first operand is not supported")
    weight = reader._const(inputs[1], "weight")
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


def _matmul(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    weight = reader._const(inputs[1], "weight")
    if weight.ndim != 2:
        raise ModelError(f"a matrix product with a {weight.ndim}-d weight is not supported")
    return ops.MatMul(weight=inputs[1], in_features=int(weight.shape[0]), out_features=int(weight.shape[1])), [
        inputs[0]
    ]


def _softmax(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
    if reader._is_map(inputs[0]):
        raise ModelError(WHY_NOT["Softmax"] + "; only a softmax in the tail is supported")
    return ops.Softmax(axis=int(attrs.get("axis", -1))), [inputs[0]]


def _tail(op_type: str) -> Callable[[_Reader, list[str], dict[str, Any]], tuple[ops.Op, list[str]]]:
    def convert(reader: _Reader, inputs: list[str], attrs: dict[str, Any]) -> tuple[ops.Op, list[str]]:
        shape = reader.shapes[inputs[0]]
        if op_type == "Flatten":
            return ops.Flatten(axis=int(attrs.get("axis", 1))), [inputs[0]]
        if op_type == "Transpose":
            return ops.Transpose(perm=tuple(int(p) for p in attrs.get("perm", reversed(range(len(shape)))))), [
                inputs[0]
            ]
        out = np.zeros(shape, np.int8)
        folded = _FOLD[op_type](reader, [out, *[reader.consts.get(t) if t else None for t in inputs[1:]]], attrs)
        return ops.Reshape(shape=tuple(int(d) for d in folded.shape)), [inputs[0]]

    return convert


_CONVERT: dict[str, Callable[[_Reader, list[str], dict[str, Any]], tuple[ops.Op, list[str]]]] = {
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
