"""Tensors on the wire: ``{dtype, shape, data}`` with ``data`` the raw little-endian bytes.

NumPy only: the wire never imports torch, so a watcher, a test or a planner can decode
messages without it; the runtime converts at its edge (``torch.from_numpy``). Never
lists of floats, never pickle.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.text import brief

__all__ = ["DTYPES", "MAX_ELEMENTS", "arrays_within", "decode_array", "decode_header", "encode_array", "wire_array"]

DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
}
_MAX_DIMS = 4
MAX_ELEMENTS = 512 * 1024 * 1024 // 4

_left: ContextVar[list[int] | None] = ContextVar("array bytes left", default=None)


@contextmanager
def arrays_within(limit_bytes: int) -> Iterator[None]:
    """Arrays decoded inside this block may take ``limit_bytes`` in all, counted from their
    declared dtypes and shapes before any of them is allocated.

    A receiver knows from the topic what a message may bring (rows a program of its own
    waits for); a compressed map declaring far more elements than that is refused before
    its bitmap is unpacked, whatever the payload's own size. Per thread (a context
    variable), so the decoders deep inside a message need no extra argument."""
    token = _left.set([limit_bytes])
    try:
        yield
    finally:
        _left.reset(token)


def wire_array(array: NDArray[Any]) -> tuple[str, NDArray[Any]]:
    """``array``'s dtype name and the array as C-ordered little-endian data, or :class:`WireError`."""
    name = str(array.dtype)
    if name not in DTYPES:
        raise WireError(f"dtype {name} cannot travel")
    return name, np.asarray(array, dtype=DTYPES[name], order="C")  # keeps 0-d shapes


def encode_array(array: NDArray[Any]) -> dict[str, Any]:
    name, array = wire_array(array)
    return {"dtype": name, "shape": list(array.shape), "data": array.tobytes()}


def decode_header(value: Mapping[str, Any], where: str) -> tuple[np.dtype[Any], list[int], int]:
    """The checked ``dtype`` and ``shape`` of an encoded array and its element count (at most
    :data:`MAX_ELEMENTS`), so that a receiver knows what it would allocate before it does."""
    dtype, shape = value["dtype"], value["shape"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise WireError(f"{where}: unknown dtype {brief(dtype)}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise WireError(f"{where}: shape must be a list of at most {_MAX_DIMS} non-negative ints, got {brief(shape)}")
    count = math.prod(shape)  # Python ints: no overflow
    if count > MAX_ELEMENTS:
        raise WireError(f"{where}: {count} elements is more than allowed")
    left = _left.get()
    if left is not None:
        size = count * DTYPES[dtype].itemsize
        if size > left[0]:
            raise WireError(f"{where}: {size} bytes of {dtype} is more than this topic may bring ({left[0]} left)")
        left[0] -= size
    return DTYPES[dtype], shape, count


def decode_array(value: Any, where: str = "tensor") -> NDArray[Any]:
    """A writable native-endian array from ``{dtype, shape, data}``, every field checked."""
    if not isinstance(value, Mapping) or set(value) != {"dtype", "shape", "data"}:
        raise WireError(f"{where}: expected a map with exactly dtype, shape and data")
    dtype, shape, count = decode_header(value, where)
    data, need = value["data"], count * dtype.itemsize
    if not isinstance(data, bytes) or len(data) != need:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise WireError(f"{where}: shape {shape} of {value['dtype']} needs {need} bytes, got {size}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(array.dtype.newbyteorder("="), copy=True)
