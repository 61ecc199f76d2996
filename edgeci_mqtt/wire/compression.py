"""Lossless compression of feature maps on the wire, pure NumPy.

Maps after a ReLU are often 30-90 % exact zeros, and they cross 20-100 Mbit/s links, so
sending a bitmap of the non-zero positions plus the non-zero values (codec ``"zeros"``)
can halve a transfer for the price of a few elementwise passes. ``"raw"`` is the plain
layout, for dense maps and for links faster than the CPU.

Only these two. A general-purpose compressor on top of ``"zeros"`` does not pay: the
float32 values of a camera image's maps almost never repeat, so a fast compressor hardly
shrinks them and one that shrinks them a little costs more CPU on an edge device than
the transfer it saves; both gain only on the flat regions of a synthetic image, which a
camera image does not have (docs/RUNTIME.md, decisions and their measurements).

"Zero" means the bit pattern 0: ``-0.0`` and NaNs with any payload are values, so every
map round-trips bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.text import brief
from edgeci_mqtt.wire.tensors import decode_array, decode_header, encode_array, wire_array

__all__ = [
    "CODECS",
    "ZEROS_DECODE_PASSES",
    "ZEROS_ENCODE_PASSES",
    "PackedArray",
    "choose_codec",
    "compressed_size",
    "decode_packed",
    "encode_packed",
    "send_seconds",
]

CODECS: tuple[str, ...] = ("raw", "zeros")

ZEROS_ENCODE_PASSES = 10.0
"""Seconds to encode ``"zeros"``, in ReLU passes over the same map (``torch.relu``, one
thread, the pass that ``DeviceProfile.rates["relu"]`` prices): the median of ``python -m
bench.codec_speed`` on VGG-16 maps (docs/RUNTIME.md, decisions and their measurements).
It is more on small maps, whose ReLU runs in cache, and on scattered zeros, which defeat
the branch predictor of the masked gather. Raw's copy, about one pass, is left out of
both sides."""
ZEROS_DECODE_PASSES = 9.0
"""The same for decoding ``"zeros"``."""


@dataclass(frozen=True, eq=False)
class PackedArray:
    """A message field whose array may travel compressed.

    The sender picks ``codec`` (see :func:`choose_codec`); the receiver gets the inflated
    array back and the codec it came in. Compared by identity, as arrays are not booleans.
    """

    array: NDArray[Any]
    codec: str = "raw"

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise WireError(f"unknown codec {brief(self.codec)}; choose one of {', '.join(CODECS)}")


def _bits(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The little-endian unsigned type of ``dtype``'s size: compares bit patterns, copies payloads."""
    return np.dtype(f"<u{dtype.itemsize}")


def encode_packed(packed: PackedArray) -> dict[str, Any]:
    """``"raw"`` as the plain ``{dtype, shape, data}`` (what an ``np.ndarray`` field sends, so
    a field may change type without changing a byte); ``"zeros"`` as ``{dtype, shape, codec,
    data}`` with ``data`` the packed bitmap of non-zero elements then their values."""
    if packed.codec == "raw":
        return encode_array(packed.array)
    name, array = wire_array(packed.array)
    bits = array.reshape(-1).view(_bits(array.dtype))
    mask = bits != 0
    data = np.packbits(mask).tobytes() + bits[mask].tobytes()
    return {"dtype": name, "shape": list(array.shape), "codec": packed.codec, "data": data}


def decode_packed(value: Any, where: str = "tensor") -> PackedArray:
    """The array and its codec, every size checked against the payload before the inflated
    array is allocated: a small payload declaring a huge shape is a :class:`WireError`."""
    if not isinstance(value, Mapping) or "codec" not in value:
        return PackedArray(decode_array(value, where))
    if set(value) != {"dtype", "shape", "codec", "data"}:
        raise WireError(f"{where}: expected a map with exactly dtype, shape, codec and data")
    codec, data = value["codec"], value["data"]
    if codec not in CODECS:
        raise WireError(f"{where}: unknown codec {brief(codec)}")
    if codec == "raw":
        return PackedArray(decode_array({k: v for k, v in value.items() if k != "codec"}, where))
    dtype, shape, count = decode_header(value, where)
    if not isinstance(data, bytes):
        raise WireError(f"{where}: data must be bytes, got {type(data).__name__}")
    return PackedArray(_inflate_zeros(data, dtype, count, where).reshape(shape), codec)


def _inflate_zeros(data: bytes, dtype: np.dtype[Any], count: int, where: str) -> NDArray[Any]:
    size = -(-count // 8)
    values, rest = divmod(len(data) - size, dtype.itemsize)
    if len(data) < size or rest:
        raise WireError(f"{where}: {len(data)} bytes is not a {size}-byte bitmap and whole {dtype} values")
    mask = np.unpackbits(np.frombuffer(data, np.uint8, size)).view(bool)  # at most 8x the payload
    if mask[count:].any() or np.count_nonzero(mask) != values:
        raise WireError(f"{where}: the bitmap marks {np.count_nonzero(mask[:count])} elements for {values} values")
    bits = np.zeros(count, _bits(dtype))
    bits[mask[:count]] = np.frombuffer(data, _bits(dtype), offset=size)
    return bits.view(dtype).astype(dtype.newbyteorder("="), copy=False)


def compressed_size(elements: int, nonzero_fraction: float, codec: str, itemsize: int = 4) -> int:
    """Expected bytes of ``data`` for a map of ``elements`` with this share of non-zeros."""
    if codec == "raw":
        return elements * itemsize
    return -(-elements // 8) + round(nonzero_fraction * elements) * itemsize


def send_seconds(
    elements: int,
    nonzero_fraction: float,
    codec: str,
    link_bytes_per_s: float,
    elementwise_bytes_per_s: float,
    itemsize: int = 4,
) -> float:
    """Encode + transfer + decode time of a map, the CPU priced from the device's ReLU rate
    (bytes moved per second, reads and writes, as :mod:`edgeci_mqtt.profiling` counts them)."""
    transfer = compressed_size(elements, nonzero_fraction, codec, itemsize) / link_bytes_per_s
    if codec == "raw":
        return transfer
    relu_pass = 2 * elements * itemsize / elementwise_bytes_per_s
    return transfer + (ZEROS_ENCODE_PASSES + ZEROS_DECODE_PASSES) * relu_pass


def choose_codec(array: NDArray[Any], link_bytes_per_s: float, elementwise_bytes_per_s: float) -> str:
    """The codec that sends ``array`` soonest; costs one count of its non-zero bit patterns."""
    elements = array.size
    if elements == 0:
        return "raw"
    _, array = wire_array(array)
    nonzero = np.count_nonzero(array.reshape(-1).view(_bits(array.dtype))) / elements
    return min(
        CODECS,
        key=lambda c: send_seconds(
            elements, nonzero, c, link_bytes_per_s, elementwise_bytes_per_s, array.dtype.itemsize
        ),
    )
