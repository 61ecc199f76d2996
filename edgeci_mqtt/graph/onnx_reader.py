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

from pathlib import Path
from typing import Any

import numpy as np

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph import ops
from edgeci_mqtt.graph.builder import Array, GraphBuilder
from edgeci_mqtt.graph.graph import Graph
from edgeci_mqtt.graph.onnx_convert import CONVERT, WHY_NOT
from edgeci_mqtt.graph.onnx_fold import FOLD, MAX_FOLDED, TAIL_USERS, VIEWS

__all__ = ["MAX_FILE_BYTES", "MAX_FOLDED", "OPSETS", "read_onnx"]

MAX_FILE_BYTES = 1 << 31
"""Largest model file (and external data) read: 2 GiB, protobuf's own limit."""
OPSETS = range(7, 22)
"""Versions of the default ONNX domain read (the exporters of the last years emit 13-21)."""


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


class _Reader:
    def __init__(self, model: Any, name: str, size: tuple[int, int] | None) -> None:
        self.model, self.name, self.size = model, name, size
        self.graph = GraphBuilder(name)
        self.consts, self.shapes = self.graph.consts, self.graph.shapes
        self.opset = 0
        graph = model.graph
        self.used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
        """Every tensor some node or the graph's outputs read (a node's extra outputs must not be)."""

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
            if len(node.output) > 1 and node.output[1] in self.used:
                raise ModelError("its mask output is used: only inference-mode dropout is supported")
            self.graph.alias(node.output[0], inputs[0])
            return
        if op_type == "Shape":
            shape = self.graph.shape_of(inputs[0])
            start, end = attrs.get("start", 0), attrs.get("end", len(shape))
            self.graph.constant(node.output[0], np.array(shape[slice(start, end)], dtype=np.int64))
            return
        if all(t == "" or t in self.consts for t in inputs) and op_type in FOLD:
            try:
                folded = FOLD[op_type]([self.consts.get(t) for t in inputs], attrs)
            except (ValueError, IndexError, TypeError) as exc:
                raise ModelError(f"cannot evaluate it on its constant operands: {exc}") from exc
            self.graph.constant(node.output[0], folded)
            return
        if op_type in VIEWS and (self.graph.is_viewed(inputs[0]) or self.is_map(inputs[0])):
            self._view(node, label, op_type, inputs, attrs)
            return
        tail = op_type in TAIL_USERS
        inputs = [self.graph.operand(t, tail) if t else "" for t in inputs]
        convert = CONVERT.get(op_type)
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
            if extra and extra in self.used:
                raise ModelError(f"its output {extra!r} is used; only the first output of {op_type} is supported")

    def _view(self, node: Any, label: str, op_type: str, inputs: list[str], attrs: dict[str, Any]) -> None:
        rest = [self.consts.get(t) if t else None for t in inputs[1:]]
        perm = [int(p) for p in attrs.get("perm", range(3, -1, -1))] if op_type == "Transpose" else None

        def fold(index: Array) -> Array:
            return FOLD[op_type]([index, *rest], attrs)

        self.graph.view(label, inputs[0], node.output[0], fold, perm)

    def is_map(self, tensor: str) -> bool:
        return self.graph.is_map(tensor)

    def const(self, tensor: str, what: str) -> Array:
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
