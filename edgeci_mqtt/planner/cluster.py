"""Cluster descriptions: the devices, their compute shares and their links to the broker.

The same YAML file drives the simulator, the planner and the emulated cluster, so a
measured run and a simulated one describe the same thing. Files are validated field
by field; an error names the file and the field. ``media`` names shared links (one Wi-Fi
access point): a device with ``medium: <name>`` sits behind it, so its transfers share the
medium's bandwidth with the other devices behind it (docs/EMULATION.md, docs/PLANNER.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from edgeci_mqtt.core.link import Link, Medium
from edgeci_mqtt.errors import ClusterError

__all__ = ["REFERENCE_CLUSTERS", "ClusterSpec", "DeviceSpec", "cluster_yaml", "load_cluster", "parse_cluster"]

_DATA = files("edgeci_mqtt") / "data" / "clusters"
REFERENCE_CLUSTERS: tuple[str, ...] = ("homo4", "hetero4", "hetero8", "swarm64")


@dataclass(frozen=True)
class DeviceSpec:
    """One host: ``cpu`` is its compute as a share of one core of the reference host."""

    name: str
    cpu: float
    link: Link


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    broker: DeviceSpec
    devices: tuple[DeviceSpec, ...]
    emulate: bool = True

    def device(self, name: str) -> DeviceSpec:
        for spec in self.devices:
            if spec.name == name:
                return spec
        raise ClusterError(f"cluster {self.name} has no device {name!r}")

    def without(self, name: str) -> ClusterSpec:
        """The cluster after device ``name`` left."""
        self.device(name)
        return replace(self, devices=tuple(d for d in self.devices if d.name != name))

    @property
    def media(self) -> tuple[Medium, ...]:
        """The shared media its devices sit behind, in order of first use."""
        return tuple(dict.fromkeys(d.link.medium for d in self.devices if d.link.medium is not None))


def _number(where: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClusterError(f"{where}: expected a number, got {value!r}")
    if (positive and value <= 0) or value < 0:
        raise ClusterError(f"{where}: must be {'positive' if positive else 'zero or more'}, got {value!r}")
    return float(value)


def _fields(where: str, data: Any, required: set[str], optional: frozenset[str] = frozenset()) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ClusterError(f"{where}: expected a mapping with {', '.join(sorted(required))}")
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise ClusterError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    for key in sorted(required):
        if key not in data:
            raise ClusterError(f"{where}: missing field {key}")
    return data


def _name(where: str, name: Any) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ClusterError(f"{where}: expected letters, digits, '-' or '_', got {name!r}")
    return name


def _host(where: str, data: Any, name: str | None, media: Mapping[str, Medium]) -> DeviceSpec:
    required = {"cpu", "bandwidth_mbit", "latency_ms"} | ({"name"} if name is None else set())
    data = _fields(where, data, required, frozenset({"medium"}) if name is None else frozenset())
    medium = None
    if "medium" in data:
        if data["medium"] not in media:
            raise ClusterError(f"{where}.medium: {data['medium']!r} is not one of the cluster's media")
        medium = media[data["medium"]]
    return DeviceSpec(
        name or _name(f"{where}.name", data["name"]),
        _number(f"{where}.cpu", data["cpu"], positive=True),
        Link(
            _number(f"{where}.bandwidth_mbit", data["bandwidth_mbit"], positive=True),
            _number(f"{where}.latency_ms", data["latency_ms"], positive=False),
            medium,
        ),
    )


def _media(source: str, data: Any) -> dict[str, Medium]:
    if not isinstance(data, list):
        raise ClusterError(f"{source}: media must be a list")
    media: dict[str, Medium] = {}
    for i, entry in enumerate(data):
        where = f"{source}: media[{i}]"
        fields = _fields(where, entry, {"name", "bandwidth_mbit"})
        name = _name(f"{where}.name", fields["name"])
        if name in media:
            raise ClusterError(f"{where}: medium name {name!r} appears twice")
        media[name] = Medium(name, _number(f"{where}.bandwidth_mbit", fields["bandwidth_mbit"], positive=True))
    return media


def parse_cluster(data: Any, source: str = "cluster") -> ClusterSpec:
    """Validate a decoded cluster file."""
    if not isinstance(data, Mapping):
        raise ClusterError(f"{source}: expected a mapping at the top level")
    unknown = sorted(set(data) - {"name", "broker", "devices", "emulate", "media"})
    if unknown:
        raise ClusterError(f"{source}: unknown field(s) {', '.join(map(str, unknown))}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ClusterError(f"{source}: missing or empty name")
    if "broker" not in data:
        raise ClusterError(f"{source}: missing broker")
    media = _media(source, data.get("media", []))
    broker = _host(f"{source}: broker", data["broker"], "broker", {})
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices:
        raise ClusterError(f"{source}: devices must be a non-empty list")
    specs = tuple(_host(f"{source}: devices[{i}]", d, None, media) for i, d in enumerate(devices))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ClusterError(f"{source}: device name {spec.name!r} appears twice")
        seen.add(spec.name)
    emulate = data.get("emulate", True)
    if not isinstance(emulate, bool):
        raise ClusterError(f"{source}: emulate must be true or false")
    return ClusterSpec(name, broker, specs, emulate)


def load_cluster(path_or_name: str | Path) -> ClusterSpec:
    """Load a cluster file, or one of the shipped reference clusters by name."""
    text_name = str(path_or_name)
    if text_name in REFERENCE_CLUSTERS:
        source, text = f"{text_name}.yaml", (_DATA / f"{text_name}.yaml").read_text(encoding="utf-8")
    else:
        path = Path(path_or_name)
        if not path.is_file():
            raise ClusterError(f"cluster file {path} does not exist (or name one of {', '.join(REFERENCE_CLUSTERS)})")
        source, text = str(path), path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClusterError(f"{source}: not valid YAML: {exc}".splitlines()[0]) from exc
    return parse_cluster(data, source)


def cluster_yaml(spec: ClusterSpec, comment: str = "") -> str:
    """``spec`` as a cluster file (``comment`` first, as ``#`` lines); :func:`parse_cluster`
    reads it back to an equal spec."""

    def num(x: float) -> str:
        short = f"{x:g}"
        return short if float(short) == x else repr(x)

    def host(d: DeviceSpec, name: bool) -> str:
        fields = ([f"name: {d.name}"] if name else []) + [
            f"cpu: {num(d.cpu)}",
            f"bandwidth_mbit: {num(d.link.bandwidth_mbit)}",
            f"latency_ms: {num(d.link.latency_ms)}",
        ]
        if d.link.medium is not None:
            fields.append(f"medium: {d.link.medium.name}")
        return "{" + ", ".join(fields) + "}"

    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines += [f"name: {spec.name}", f"broker: {host(spec.broker, False)}"]
    if spec.media:
        lines.append("media:")
        lines += [f"  - {{name: {m.name}, bandwidth_mbit: {num(m.bandwidth_mbit)}}}" for m in spec.media]
    lines.append("devices:")
    lines += [f"  - {host(d, True)}" for d in spec.devices]
    if not spec.emulate:
        lines.append("emulate: false")
    return "\n".join(lines) + "\n"
