"""The project's own types on the wire: spans, regions, blocks, device profiles and links.

Each has an encoder and a decoder that checks what a hostile sender could get wrong
(ranges, finiteness, sizes, key lengths) and names the field; :mod:`edgeci_mqtt.wire.values`
uses them for every field annotated with one of these types.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.link import Link, Medium
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.text import brief
from edgeci_mqtt.timeline import Interval, intervals_from_rows
from edgeci_mqtt.wire.compression import PackedArray, decode_packed, encode_packed
from edgeci_mqtt.wire.tensors import decode_array, encode_array
from edgeci_mqtt.wire.topics import check_segment

__all__ = ["CODECS", "MAX_INDEX", "MAX_KEY", "Decoder", "Encoder", "check_map", "check_number"]

MAX_KEY = 128
MAX_INDEX = 1 << 20
"""Largest row, column or stage index a region, span or block may name."""


def check_number(data: Any, where: str, integer: bool) -> int | float:
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
        start, stop = check_number(start, where, integer=True), check_number(stop, where, integer=True)
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
    return tuple(int(check_number(v, where, integer=True)) for v in data)


def _rate(data: Any, where: str) -> float:
    value = float(check_number(data, where, integer=False))
    if not 0 < value < 1e18:
        raise WireError(f"{where}: rate {value} is not positive")
    return value


def _window(data: Any, where: str) -> int:
    value = int(check_number(data, where, integer=True))
    if not 1 <= value <= MAX_INDEX:
        raise WireError(f"{where}: window {value} is out of range")
    return value


def check_map(data: Any, where: str, limit: int = 64) -> Mapping[str, Any]:
    """A map of at most ``limit`` entries whose keys are short printable strings (they end up in logs)."""
    if not isinstance(data, dict) or len(data) > limit:
        raise WireError(f"{where}: expected a map of at most {limit} entries")
    bad = next((k for k in data if not (isinstance(k, str) and 0 < len(k) <= MAX_KEY and k.isprintable())), None)
    if bad is not None:
        raise WireError(f"{where}: key {brief(bad)} is not 1-{MAX_KEY} printable characters")
    return data


def _profile(data: Any, where: str) -> DeviceProfile:
    """A device profile, every number checked before the planner ever divides by it."""
    data = check_map(data, where)
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
    for kind, table in check_map(data["pool_rates"], f"{where}.pool_rates").items():
        if not (isinstance(table, list) and 1 <= len(table) <= 64) or not all(
            isinstance(p, list) and len(p) == 2 for p in table
        ):
            raise WireError(f"{where}.pool_rates.{kind}: expected 1 to 64 [window, rate] pairs")
        pools[kind] = tuple(
            (_window(a, f"{where}.pool_rates.{kind}"), _rate(r, f"{where}.pool_rates")) for a, r in table
        )
    overhead = float(check_number(data["op_overhead_s"], f"{where}.op_overhead_s", integer=False))
    threads = int(check_number(data["threads"], f"{where}.threads", integer=True))
    if not 0 <= overhead < 10 or not 1 <= threads <= 1024:
        raise WireError(f"{where}: overhead {overhead} s or {threads} threads out of range")
    try:
        return DeviceProfile(
            conv_depths=depths,
            conv_sides=sides,
            conv_rates=tuple(rates),
            rates={k: _rate(v, f"{where}.rates.{k}") for k, v in check_map(data["rates"], f"{where}.rates").items()},
            pool_rates=pools,
            op_overhead_s=overhead,
            threads=threads,
        )
    except EdgeCIError as exc:
        raise WireError(f"{where}: {exc}") from exc


def _link(data: Any, where: str) -> Link:
    data = check_map(data, where, limit=3)
    if not {"bandwidth_mbit", "latency_ms"} <= set(data) <= {"bandwidth_mbit", "latency_ms", "medium"}:
        raise WireError(f"{where}: expected bandwidth_mbit and latency_ms (and a medium)")
    bandwidth = float(check_number(data["bandwidth_mbit"], f"{where}.bandwidth_mbit", integer=False))
    latency = float(check_number(data["latency_ms"], f"{where}.latency_ms", integer=False))
    if not (0 < bandwidth <= 1e6 and 0 <= latency <= 1e5):
        raise WireError(f"{where}: {bandwidth} Mbit/s and {latency} ms is not a link")
    return Link(bandwidth, latency, _medium(data["medium"], f"{where}.medium") if "medium" in data else None)


def _medium(data: Any, where: str) -> Medium:
    shared = check_map(data, where, limit=2)
    if set(shared) != {"name", "bandwidth_mbit"} or not isinstance(shared["name"], str):
        raise WireError(f"{where}: expected a name and bandwidth_mbit")
    mbit = float(check_number(shared["bandwidth_mbit"], f"{where}.bandwidth_mbit", integer=False))
    if not 0 < mbit <= 1e6:
        raise WireError(f"{where}: {mbit} Mbit/s is not a bandwidth")
    return Medium(check_segment(shared["name"], f"{where}.name"), mbit)


Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, str], Any]

CODECS: dict[type, tuple[Encoder, Decoder]] = {
    Span: (lambda s: [s.start, s.stop], _span),
    TileRegion: (lambda r: [r.rows.start, r.rows.stop, r.cols.start, r.cols.stop], _region),
    FusedBlock: (lambda b: [b.start, b.stop], _block),
    DeviceProfile: (lambda p: p.to_dict(), _profile),
    Link: (lambda link: link.to_dict(), _link),
    np.ndarray: (encode_array, decode_array),
    PackedArray: (encode_packed, decode_packed),
    Interval: (lambda i: i.to_row(), lambda data, where: intervals_from_rows([data])[0]),
}
