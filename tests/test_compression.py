"""Feature-map codecs: bit-exact round trips, hostile payloads only ever a WireError, the codec choice."""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.wire.compression import (
    CODECS,
    PackedArray,
    choose_codec,
    compressed_size,
    decode_packed,
    encode_packed,
)
from edgeci_mqtt.wire.tensors import DTYPES, encode_array
from edgeci_mqtt.wire.values import decode_record, encode_record

pytestmark = pytest.mark.pure

RNG = np.random.default_rng(0)
MBIT = 1e6 / 8
RELU_RATE = 20e9
"""Bytes/s of a ReLU on this kind of host (``DeviceProfile.rates["relu"]``)."""


def post_relu(zeros: float, shape: tuple[int, ...] = (1, 8, 9, 7), rng: np.random.Generator = RNG) -> np.ndarray:
    """A float32 map with about this share of exact zeros."""
    values = rng.standard_normal(shape).astype(np.float32)
    return np.where(rng.random(shape) < zeros, np.float32(0), np.abs(values) + np.float32(0.1))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def round_trip(array: np.ndarray, codec: str) -> PackedArray:
    """Through msgpack too, as a message field travels."""
    wire = msgpack.unpackb(msgpack.packb(encode_packed(PackedArray(array, codec))))
    back = decode_packed(wire)
    assert back.codec == codec and same_bits(back.array, array) and back.array.flags.writeable
    return back


SPECIAL = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, 0.0], dtype=np.float32)
NAN_PAYLOADS = np.array([0x7FC00001, 0xFFC12345, 0x7F800001, 0x80000000, 0], dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "array",
    [
        *(post_relu(z) for z in (0.0, 0.3, 0.5, 0.9, 1.0)),
        SPECIAL,
        NAN_PAYLOADS,
        np.zeros((1, 3, 5, 5), np.float32),
        np.full((1, 3, 5, 5), -0.0, np.float32),
        np.zeros((1, 0, 4, 4), np.float32),
        np.zeros(0, np.float64),
        np.array(3.5, np.float32),
        *(post_relu(0.5, (n,)) for n in (1, 7, 8, 9, 15, 17)),  # bitmap padding
        *(np.arange(-3, 10).astype(dtype).reshape(1, 13) for dtype in DTYPES.values()),
        np.array([-0.0, np.nan, 0.0], np.float64),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_every_map_round_trips_bit_for_bit(array: np.ndarray, codec: str) -> None:
    round_trip(array, codec)


@given(
    zeros=st.floats(0, 1),
    dtype=st.sampled_from(sorted(DTYPES)),
    shape=st.lists(st.integers(0, 9), max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_maps_of_any_density_round_trip(zeros: float, dtype: str, shape: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(*shape, DTYPES[dtype].itemsize), dtype=np.uint8)
    raw[rng.random(shape) < zeros] = 0
    array = raw.view(DTYPES[dtype]).reshape(shape)
    for codec in CODECS:
        round_trip(array, codec)


def test_zeros_shrinks_a_sparse_map_and_raw_is_the_plain_layout() -> None:
    array = post_relu(0.7, (1, 64, 28, 28))
    data = encode_packed(PackedArray(array, "zeros"))["data"]
    assert len(data) == compressed_size(array.size, np.count_nonzero(array) / array.size, "zeros")
    assert len(data) < 0.4 * array.nbytes
    assert encode_packed(PackedArray(array)) == encode_array(array)  # byte-identical to an ndarray field
    assert decode_packed(encode_array(array)).codec == "raw"
    assert compressed_size(10, 0.5, "raw") == 40 and compressed_size(9, 0.0, "zeros") == 2


def test_the_codec_choice_weighs_the_link_against_the_cpu() -> None:
    dense, sparse = post_relu(0.0, (1, 64, 28, 28)), post_relu(0.7, (1, 64, 28, 28))
    assert choose_codec(dense, 20 * MBIT, RELU_RATE) == "raw"
    assert choose_codec(sparse, 20 * MBIT, RELU_RATE) == "zeros"
    assert choose_codec(sparse, 100_000 * MBIT, RELU_RATE / 10) == "raw"
    assert choose_codec(np.zeros(0, np.float32), 20 * MBIT, RELU_RATE) == "raw"


def zeros_map(dtype: str, shape: list[int], data: bytes, codec: Any = "zeros") -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "codec": codec, "data": data}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (zeros_map("float32", [9], b"\x00\x00", codec="lz4"), "unknown codec 'lz4'"),
        (zeros_map("float32", [9], b"\x00\x00", codec=["zeros"]), "unknown codec"),
        (zeros_map("float32", [9], b"\x00"), "not a 2-byte bitmap"),
        (zeros_map("float32", [9], b"\x80\x00\x00\x00"), "not a 2-byte bitmap"),
        (zeros_map("float32", [9], b"\x80\x00"), "marks 1 elements for 0 values"),
        (zeros_map("float32", [9], b"\x00\x40" + b"\x00" * 4), "marks 0 elements for 1 values"),  # padding bit
        (zeros_map("float32", [2], "text"), "data must be bytes"),
        (zeros_map("float16", [2], b"\x00"), "unknown dtype"),
        ({"dtype": "float32", "shape": [1], "codec": "zeros"}, "exactly dtype, shape, codec and data"),
        ({"dtype": "float32", "shape": [1], "codec": "raw", "data": b""}, "needs 4 bytes, got 0"),
        ([1, 2], "exactly dtype, shape and data"),
    ],
)
def test_malformed_packed_maps(value: Any, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_packed(value)


def test_unknown_codecs_are_refused_on_the_sending_side_too() -> None:
    with pytest.raises(WireError, match="unknown codec"):
        PackedArray(np.zeros(1, np.float32), "gzip")
    with pytest.raises(WireError, match="cannot travel"):
        encode_packed(PackedArray(np.zeros(1, np.float16), "zeros"))


@pytest.mark.parametrize("count", [500_000_000, 100_000_000])  # over MAX_ELEMENTS, and within it
def test_a_decompression_bomb_is_refused_before_any_allocation(count: int) -> None:
    bomb = zeros_map("float32", [1, count], b"\xff" * 4 + b"\x00" * 4)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(WireError):
            decode_packed(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024 and time.perf_counter() - started < 0.5


def encoded_maps() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda zeros, n, dtype, codec: encode_packed(
            PackedArray(post_relu(zeros, (n,), np.random.default_rng(n)).astype(dtype), codec)
        ),
        st.floats(0, 1),
        st.integers(0, 40),
        st.sampled_from(sorted(DTYPES)),
        st.sampled_from(CODECS),
    )


def garble(draw: st.DrawFn, value: dict[str, Any]) -> dict[str, Any]:
    """Change one field to something plausible, or anything, or drop it; or flip the data's bytes."""
    key = draw(st.sampled_from([*value, "codec", "extra"]))
    anything = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=64)
    data = value["data"]
    options = {
        "dtype": st.sampled_from([*DTYPES, "float16", "<f4"]) | anything,
        "shape": st.lists(st.integers(-2, 2**33), max_size=5) | anything,
        "codec": st.sampled_from([*CODECS, "zlib", ""]) | anything,
        "data": st.binary(max_size=len(data) + 9)
        | st.builds(lambda i, b: data[:i] + bytes([b]) + data[i + 1 :], st.integers(0, len(data)), st.integers(0, 255)),
        "extra": anything,
    }
    garbled = dict(value)
    if draw(st.booleans()):
        garbled.pop(key, None)
    else:
        garbled[key] = draw(options[key])
    return garbled


@given(st.data())
def test_garbled_maps_decode_or_raise_only_wire_errors(data: st.DataObject) -> None:
    value = garble(data.draw, data.draw(encoded_maps()))
    try:
        back = decode_packed(value)
    except WireError:
        return
    assert back.array.size * back.array.itemsize <= 64 * max(len(value.get("data", b"")), 1)


@given(st.recursive(st.none() | st.integers() | st.binary(max_size=16) | st.text(max_size=8), st.lists, max_leaves=8))
def test_arbitrary_values_are_a_wire_error(value: Any) -> None:
    with pytest.raises(WireError):
        decode_packed(value)


@dataclass(frozen=True)
class Tile:
    """A throwaway message-like record with a compressible field."""

    id: str
    output: PackedArray
    extra: PackedArray | None = None


def test_a_message_field_carries_a_packed_map() -> None:
    array = post_relu(0.6, (1, 16, 10, 10))
    record = Tile("t", PackedArray(array, choose_codec(array, 20 * MBIT, RELU_RATE)))
    wire = msgpack.unpackb(msgpack.packb(encode_record(record)))
    assert wire["output"]["codec"] == "zeros" and wire["extra"] is None
    back = decode_record(Tile, wire, "tile")
    assert back.id == "t" and back.extra is None and back.output.codec == "zeros"
    assert same_bits(back.output.array, array)
    again = decode_record(Tile, encode_record(Tile("t", PackedArray(array), PackedArray(array, "zeros"))), "tile")
    assert again.output.codec == "raw" and again.extra is not None and same_bits(again.extra.array, array)
    with pytest.raises(WireError, match=r"tile\.output: unknown codec"):
        decode_record(Tile, {"id": "t", "output": {**wire["output"], "codec": "rle"}}, "tile")
