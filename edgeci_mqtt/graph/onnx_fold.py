"""Folding ONNX nodes whose operands are all known: numpy on constants, and on index arrays.

The shape arithmetic exporters put in front of ``Resize`` and ``Reshape`` (``Shape``,
``Gather``, ``Slice``, ``Concat``, ``Cast``, ...) is evaluated here for the graph's input
size, and the same functions follow a map's reshapes and transposes as index arrays
(:meth:`~edgeci_mqtt.graph.builder.GraphBuilder.view`). A fold that would make a constant of
more than :data:`MAX_FOLDED` elements is refused before the memory is taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph.builder import Array

__all__ = ["FOLD", "MAX_FOLDED", "TAIL_USERS", "VIEWS", "Fold", "axes_of"]

MAX_FOLDED = 1 << 24
"""Most elements a folded constant may have: shape arithmetic makes a few; a file that asks
for more is refused before the memory is taken."""
Fold = Callable[[Sequence[Array | None], dict[str, Any]], Array]
"""A node's operands (None where absent) and attributes to its value."""


def axes_of(operands: Sequence[Array | None], attrs: dict[str, Any], at: int = 1) -> list[int] | None:
    if len(operands) > at and operands[at] is not None:
        return [int(a) for a in np.asarray(operands[at]).ravel()]
    return list(attrs["axes"]) if "axes" in attrs else None


def _reshape(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    data, shape = ops[0], ops[1]
    assert data is not None and shape is not None
    dims = [int(d) for d in np.asarray(shape).ravel()]
    if not attrs.get("allowzero", 0):
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return data.reshape(dims)


def _slice(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
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


def _squeeze(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    data = ops[0]
    assert data is not None
    axes = axes_of(ops, attrs)
    return np.squeeze(data, axis=tuple(axes)) if axes else np.squeeze(data)


def _unsqueeze(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    data = ops[0]
    assert data is not None
    axes = axes_of(ops, attrs) or []
    rank = data.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        data = np.expand_dims(data, a)
    return data


def _flatten(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    data = ops[0]
    assert data is not None
    axis = attrs.get("axis", 1) % (data.ndim + 1) if data.ndim else 0
    return data.reshape(math.prod(data.shape[:axis]), -1)


def _elementwise(f: Callable[..., Array]) -> Fold:
    return lambda ops, attrs: f(*ops)


def _cast(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    from onnx import helper

    assert ops[0] is not None
    return ops[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))


def _gather(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    assert ops[0] is not None and ops[1] is not None
    return np.take(ops[0], ops[1].astype(np.int64), axis=attrs.get("axis", 0))


def _concat_const(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    return np.concatenate([np.atleast_1d(o) for o in ops if o is not None], axis=attrs["axis"])


def _constant_of_shape(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    from onnx import numpy_helper

    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    assert ops[0] is not None
    dims = [int(d) for d in ops[0]]
    _bounded(math.prod(dims) if all(d >= 0 for d in dims) else -1)
    return np.full(dims, value.ravel()[0], dtype=value.dtype)


def _range(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    start, limit, delta = (np.asarray(o).item() for o in ops)
    _bounded(math.ceil((limit - start) / delta) if delta else -1)
    return np.arange(start, limit, delta, dtype=np.asarray(ops[0]).dtype)


def _bounded(elements: int) -> None:
    """A constant this op would make is within :data:`MAX_FOLDED` elements (and makes sense)."""
    if not 0 <= elements <= MAX_FOLDED:
        raise ModelError(f"it would make a constant of {elements} elements (at most {MAX_FOLDED} are folded)")


def _transpose(ops: Sequence[Array | None], attrs: dict[str, Any]) -> Array:
    assert ops[0] is not None
    return np.transpose(ops[0], attrs.get("perm"))


def _div(a: Array, b: Array) -> Array:
    if np.asarray(a).dtype.kind in "iu" and np.asarray(b).dtype.kind in "iu":
        return np.asarray(np.trunc(np.asarray(a) / np.asarray(b)), dtype=np.result_type(a, b))
    return np.asarray(np.divide(a, b))


FOLD: dict[str, Fold] = {
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
VIEWS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")
TAIL_USERS = ("Gemm", "MatMul", "Softmax", "Flatten", "Reshape", "Transpose")
