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
from typing import Annotated, Any, get_args, get_origin

import numpy as np

from edgeci_mqtt.core.bounds import Id, MaxLen, Range
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.wire.domain import CODECS, Decoder, Encoder, check_map, check_number
from edgeci_mqtt.wire.topics import check_segment

__all__ = ["Id", "MaxLen", "Range", "decode_record", "decode_value", "encode_record", "encode_value"]

MAX_STRING = 4096
MAX_ITEMS = 65_536


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
    if base in CODECS:
        return CODECS[base][1]
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
        value = data if type(data) is exact and (integer or math.isfinite(data)) else check_number(data, where, integer)
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
        entries = check_map(data, where, limit)
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
    if base in CODECS:
        return CODECS[base][0]
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
