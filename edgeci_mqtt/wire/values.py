"""Typed values on the wire, encoded and checked from their type annotations.

A message field is declared with its real type (``TileRegion``, ``FusedBlock``,
``DeviceProfile``, ``tuple[Span, ...]``, ``Annotated[float, Range(0, 1e6)]``) and
:func:`decode_value` turns msgpack data into that type or raises :class:`WireError`
naming the field: numbers are finite and in range, ids are topic-safe, sequences and
maps are bounded, regions are non-empty. Receivers get typed values, validated once,
and never parse a list of ints again.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, get_args, get_origin

import numpy as np

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.bounds import Id, MaxLen, Range
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.link import Link, Medium
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.text import brief
from edgeci_mqtt.timeline import Interval, intervals_from_rows
from edgeci_mqtt.wire.compression import PackedArray, decode_packed, encode_packed
from edgeci_mqtt.wire.tensors import decode_array, encode_array
from edgeci_mqtt.wire.topics import check_segment

__all__ = ["Id", "MaxLen", "Range", "decode_record", "decode_value", "encode_record", "encode_value"]

MAX_STRING = 4096
MAX_ITEMS = 65_536
MAX_KEY = 128
MAX_INDEX = 1 << 20
"""Largest row, column or stage index a region, span or block may name."""


def _number(data: Any, where: str, integer: bool) -> int | float:
    if isinstance(data, bool) or not isinstance(data, int if integer else int | float):
        raise WireError(f"{where}: expected {'an int' if integer else 'a number'}, got {type(data).__name__}")
    if integer:
        return int(data)
    if not math.isfinite(data):
        raise WireError(f"{where}: {data} is not finite")
    return float(data)


def _index_pair(data: Any, where: str) -> tuple[int, int]:
    if not isinstance(data, list) or len(data) != 2:
        raise WireError(f"{where}: expected [start, stop], got {brief(data)}")
    start, stop = data
    if type(start) is not int or type(stop) is not int:  # the common case in one test; then the precise one
        start, stop = _number(start, where, integer=True), _number(stop, where, integer=True)
    if not 0 <= start < stop <= MAX_INDEX:
        raise WireError(f"{where}: [{start}, {stop}) is not a non-empty range within [0, {MAX_INDEX}]")
    return int(start), int(stop)


def _span(data: Any, where: str) -> Span:
    return Span(*_index_pair(data, where))


def _region(data: Any, where: str) -> TileRegion:
    if not isinstance(data, list) or len(data) != 4:
        raise WireError(f"{where}: expected [y0, y1, x0, x1], got {brief(data)}")
    return TileRegion(_span(data[:2], f"{where} rows"), _span(data[2:], f"{where} cols"))


def _block(data: Any, where: str) -> FusedBlock:
    return FusedBlock(*_index_pair(data, where))


def _probe_sizes(data: Any, where: str) -> tuple[int, ...]:
    """2 to 64 ints (``DeviceProfile`` checks that they increase from a positive start)."""
    if not isinstance(data, list) or not 2 <= len(data) <= 64:
        raise WireError(f"{where}: expected 2 to 64 ints")
    return tuple(int(_number(v, where, integer=True)) for v in data)


def _rate(data: Any, where: str) -> float:
    value = float(_number(data, where, integer=False))
    if not 0 < value < 1e18:
        raise WireError(f"{where}: rate {value} is not positive")
    return value


def _window(data: Any, where: str) -> int:
    value = int(_number(data, where, integer=True))
    if not 1 <= value <= MAX_INDEX:
        raise WireError(f"{where}: window {value} is out of range")
    return value


def _map(data: Any, where: str, limit: int = 64) -> Mapping[str, Any]:
    """A map of at most ``limit`` entries whose keys are short printable strings (they end up in logs)."""
    if not isinstance(data, dict) or len(data) > limit:
        raise WireError(f"{where}: expected a map of at most {limit} entries")
    bad = next((k for k in data if not (isinstance(k, str) and 0 < len(k) <= MAX_KEY and k.isprintable())), None)
    if bad is not None:
        raise WireError(f"{where}: key {brief(bad)} is not 1-{MAX_KEY} printable characters")
    return data


def _profile(data: Any, where: str) -> DeviceProfile:
    """A device profile, every number checked before the planner ever divides by it."""
    data = _map(data, where)
    expected = {"conv_depths", "conv_sides", "conv_rates", "rates", "pool_rates", "op_overhead_s", "threads"}
    if set(data) != expected:
        raise WireError(f"{where}: expected exactly the fields {', '.join(sorted(expected))}")
    depths = _probe_sizes(data["conv_depths"], f"{where}.conv_depths")
    sides = _probe_sizes(data["conv_sides"], f"{where}.conv_sides")
    rows = data["conv_rates"]
    if not isinstance(rows, list) or len(rows) != len(depths):
        raise WireError(f"{where}.conv_rates: expected one row per depth")
    rates = []
    for row in rows:
        if not isinstance(row, list) or len(row) != len(sides):
            raise WireError(f"{where}.conv_rates: expected one rate per side")
        rates.append(tuple(_rate(v, f"{where}.conv_rates") for v in row))
    pools: dict[str, tuple[tuple[int, float], ...]] = {}
    for kind, table in _map(data["pool_rates"], f"{where}.pool_rates").items():
        if not (isinstance(table, list) and 1 <= len(table) <= 64) or not all(
            isinstance(p, list) and len(p) == 2 for p in table
        ):
            raise WireError(f"{where}.pool_rates.{kind}: expected 1 to 64 [window, rate] pairs")
        pools[kind] = tuple(
            (_window(a, f"{where}.pool_rates.{kind}"), _rate(r, f"{where}.pool_rates")) for a, r in table
        )
    overhead = float(_number(data["op_overhead_s"], f"{where}.op_overhead_s", integer=False))
    threads = int(_number(data["threads"], f"{where}.threads", integer=True))
    if not 0 <= overhead < 10 or not 1 <= threads <= 1024:
        raise WireError(f"{where}: overhead {overhead} s or {threads} threads out of range")
    try:
        return DeviceProfile(
            conv_depths=depths,
            conv_sides=sides,
            conv_rates=tuple(rates),
            rates={k: _rate(v, f"{where}.rates.{k}") for k, v in _map(data["rates"], f"{where}.rates").items()},
            pool_rates=pools,
            op_overhead_s=overhead,
            threads=threads,
        )
    except EdgeCIError as exc:
        raise WireError(f"{where}: {exc}") from exc


def _link(data: Any, where: str) -> Link:
    data = _map(data, where, limit=3)
    if not {"bandwidth_mbit", "latency_ms"} <= set(data) <= {"bandwidth_mbit", "latency_ms", "medium"}:
        raise WireError(f"{where}: expected bandwidth_mbit and latency_ms (and a medium)")
    bandwidth = float(_number(data["bandwidth_mbit"], f"{where}.bandwidth_mbit", integer=False))
    latency = float(_number(data["latency_ms"], f"{where}.latency_ms", integer=False))
    if not (0 < bandwidth <= 1e6 and 0 <= latency <= 1e5):
        raise WireError(f"{where}: {bandwidth} Mbit/s and {latency} ms is not a link")
    medium = None
    if "medium" in data:
        shared = _map(data["medium"], f"{where}.medium", limit=2)
        if set(shared) != {"name", "bandwidth_mbit"}:
            raise WireError(f"{where}.medium: expected name and bandwidth_mbit")
        name = check_segment(shared["name"], f"{where}.medium.name") if isinstance(shared["name"], str) else ""
        mbit = float(_number(shared["bandwidth_mbit"], f"{where}.medium.bandwidth_mbit", integer=False))
        if not (name and len(name) <= MAX_KEY and 0 < mbit <= 1e6):
            raise WireError(f"{where}.medium: {brief(shared)} is not a named medium with a bandwidth")
        medium = Medium(name, mbit)
    return Link(bandwidth, latency, medium)


Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, str], Any]

_CODECS: dict[type, tuple[Encoder, Decoder]] = {
    Span: (lambda s: [s.start, s.stop], _span),
    TileRegion: (lambda r: [r.rows.start, r.rows.stop, r.cols.start, r.cols.stop], _region),
    FusedBlock: (lambda b: [b.start, b.stop], _block),
    DeviceProfile: (lambda p: p.to_dict(), _profile),
    Link: (lambda link: link.to_dict(), _link),
    np.ndarray: (encode_array, decode_array),
    PackedArray: (encode_packed, decode_packed),
    Interval: (lambda i: i.to_row(), lambda data, where: intervals_from_rows([data])[0]),
}


def _split(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[T, *meta]`` -> ``(T, meta)``."""
    if get_origin(hint) is Annotated:
        base, *meta = get_args(hint)
        return base, tuple(meta)
    return hint, ()


def _limit(meta: tuple[Any, ...], default: int) -> int:
    return next((m.n for m in meta if isinstance(m, MaxLen)), default)


def decode_value(data: Any, hint: Any, where: str) -> Any:
    """``data`` (as msgpack gave it) as a value of type ``hint``; :class:`WireError` if not."""
    return _decoder(hint)(data, where)


def encode_value(value: Any, hint: Any) -> Any:
    return _encoder(hint)(value)


@functools.cache
def _decoder(hint: Any) -> Decoder:
    """The decoder of ``hint``, built once per type.

    Decoding walks the annotation once here instead of on every value: a bid's 100+
    prices, decoded at 0.25 CPU on every auction round, took milliseconds when each
    element re-read its type and formatted its own position.
    """
    base, meta = _split(hint)
    origin = get_origin(base)
    if origin in (types.UnionType, typing.Union):
        inner = _decoder(next(a for a in get_args(base) if a is not type(None)))
        return lambda data, where: None if data is None else inner(data, where)
    if origin is tuple:
        return _tuple_decoder(get_args(base), meta)
    if origin is dict:
        return _dict_decoder(_decoder(get_args(base)[1]), _limit(meta, 4096), Id in meta)
    if origin is np.ndarray:
        base = np.ndarray
    if base in _CODECS:
        return _CODECS[base][1]
    if base is bool:
        return _boolean
    if base in (int, float):
        return _number_decoder(base is int, tuple(m for m in meta if isinstance(m, Range)))
    if base in (str, bytes):
        return _text_decoder(base, _limit(meta, MAX_STRING if base is str else 1 << 31), Id in meta)
    if dataclasses.is_dataclass(base) and isinstance(base, type):
        return functools.partial(decode_record, base)
    raise TypeError(f"no wire codec for {hint!r}")  # a declaration bug, not bad input


def _boolean(data: Any, where: str) -> bool:
    if not isinstance(data, bool):
        raise WireError(f"{where}: expected a boolean, got {type(data).__name__}")
    return data


def _number_decoder(integer: bool, ranges: tuple[Range, ...]) -> Decoder:
    exact = int if integer else float

    def decode(data: Any, where: str) -> int | float:
        value = data if type(data) is exact and (integer or math.isfinite(data)) else _number(data, where, integer)
        for r in ranges:
            if not r.low <= value <= r.high:
                raise WireError(f"{where}: {value} is not in [{r.low}, {r.high}]")
        return value

    return decode


def _text_decoder(base: type[str] | type[bytes], limit: int, segment: bool) -> Decoder:
    def decode(data: Any, where: str) -> Any:
        if not isinstance(data, base):
            raise WireError(f"{where}: expected {base.__name__}, got {type(data).__name__}")
        if len(data) > limit:
            raise WireError(f"{where}: {len(data)} is longer than allowed")
        return check_segment(data, where) if segment and isinstance(data, str) else data

    return decode


def _dict_decoder(value: Decoder, limit: int, segment_keys: bool) -> Decoder:
    def decode(data: Any, where: str) -> dict[str, Any]:
        entries = _map(data, where, limit)
        return {
            check_segment(k, f"{where} key") if segment_keys else k: value(v, f"{where}.{k}")
            for k, v in entries.items()
        }

    return decode


def _float_ranges(hint: Any) -> tuple[Range, ...] | None:
    """The ranges of a ``float`` item type (None: not a float)."""
    base, meta = (get_args(hint)[0], get_args(hint)[1:]) if get_origin(hint) is Annotated else (hint, ())
    return tuple(m for m in meta if isinstance(m, Range)) if base is float else None


def _all_fine_floats(data: list[Any], ranges: tuple[Range, ...]) -> bool:
    """Every item a finite float within ``ranges``, checked in C: a bid carries thousands of
    prices, too many to check one by one on a slow orchestrator (docs/RUNTIME.md, typed
    values). False: decode item by item, which names the one at fault."""
    if set(map(type, data)) - {float}:
        return False
    values = np.fromiter(data, dtype=np.float64, count=len(data))
    fine = bool(np.isfinite(values).all())
    return fine and all(bool(((values >= r.low) & (values <= r.high)).all()) for r in ranges)


def _tuple_decoder(args: tuple[Any, ...], meta: tuple[Any, ...]) -> Decoder:
    if len(args) == 2 and args[1] is Ellipsis:
        item, limit = _decoder(args[0]), _limit(meta, MAX_ITEMS)

        floats = _float_ranges(args[0])

        def decode_items(data: Any, where: str) -> tuple[Any, ...]:
            if not isinstance(data, list):
                raise WireError(f"{where}: expected a list, got {type(data).__name__}")
            if len(data) > limit:
                raise WireError(f"{where}: {len(data)} items is more than allowed")
            if floats is not None and _all_fine_floats(data, floats):
                return tuple(data)
            try:
                return tuple([item(v, where) for v in data])
            except WireError:  # decode again, naming each position, to say which item failed
                for i, v in enumerate(data):
                    item(v, f"{where}[{i}]")
                raise

        return decode_items
    parts = tuple(_decoder(a) for a in args)

    def decode_fixed(data: Any, where: str) -> tuple[Any, ...]:
        if not isinstance(data, list):
            raise WireError(f"{where}: expected a list, got {type(data).__name__}")
        if len(data) != len(parts):
            raise WireError(f"{where}: expected {len(parts)} items, got {len(data)}")
        return tuple(part(v, f"{where}[{i}]") for i, (v, part) in enumerate(zip(data, parts, strict=True)))

    return decode_fixed


def _identity(value: Any) -> Any:
    return value


@functools.cache
def _encoder(hint: Any) -> Encoder:
    """The encoder of ``hint``, built once per type (see :func:`_decoder`)."""
    base, _ = _split(hint)
    origin = get_origin(base)
    if origin in (types.UnionType, typing.Union):
        inner = _encoder(next(a for a in get_args(base) if a is not type(None)))
        return lambda value: None if value is None else inner(value)
    if origin is tuple:
        args = get_args(base)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _encoder(args[0])
            return _identity_list if item is _identity else lambda value: [item(v) for v in value]
        parts = tuple(_encoder(a) for a in args)
        return lambda value: [part(v) for v, part in zip(value, parts, strict=True)]
    if origin is dict:
        entry = _encoder(get_args(base)[1])
        return lambda value: {k: entry(v) for k, v in value.items()}
    if origin is np.ndarray:
        base = np.ndarray
    if base in _CODECS:
        return _CODECS[base][0]
    if dataclasses.is_dataclass(base):
        return encode_record
    return _identity


def _identity_list(value: Any) -> list[Any]:
    return list(value)


Fields = tuple[dict[str, Decoder], dict[str, Encoder], frozenset[str]]
_FIELDS: dict[type, Fields] = {}


def _fields(cls: type) -> Fields:
    """A dataclass's field decoders, encoders and required names, resolved once per class."""
    if cls not in _FIELDS:
        _FIELDS[cls] = _resolve_fields(cls)
    return _FIELDS[cls]


def _resolve_fields(cls: type) -> Fields:
    names = {f.name for f in dataclasses.fields(cls)}
    hints = {k: v for k, v in typing.get_type_hints(cls, include_extras=True).items() if k in names}
    required = frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    return {k: _decoder(h) for k, h in hints.items()}, {k: _encoder(h) for k, h in hints.items()}, required


def encode_record(record: Any) -> dict[str, Any]:
    return {name: encode(getattr(record, name)) for name, encode in _fields(type(record))[1].items()}


def decode_record(cls: type[Any], data: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from a map with exactly its fields (defaults may be left out)."""
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise WireError(f"{where}: expected a map with string keys")
    decoders, _, required = _fields(cls)
    unknown = sorted(set(data) - decoders.keys())
    if unknown:
        raise WireError(f"{where}: unknown field(s) {', '.join(unknown)[:200]}")
    missing = sorted(required - data.keys())
    if missing:
        raise WireError(f"{where}: missing field(s) {', '.join(missing)}")
    values = {name: decoders[name](value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except EdgeCIError as exc:
        raise WireError(f"{where}: {exc}") from exc
