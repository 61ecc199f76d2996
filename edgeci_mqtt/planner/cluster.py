"""Cluster descriptions: the devices, their compute shares and their links to the broker.

The same YAML file drives the simulator, the planner and the emulated cluster, so a
measured run and a simulated one describe the same thing. Files are validated field
by field; an error names the file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from edgeci_mqtt.core.link import Link
from edgeci_mqtt.errors import ClusterError

__all__ = ["REFERENCE_CLUSTERS", "ClusterSpec", "DeviceSpec", "load_cluster", "parse_cluster"]

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
        return ClusterSpec(self.name, self.broker, tuple(d for d in self.devices if d.name != name), self.emulate)


def _number(where: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClusterError(f"{where}: expected a number, got {value!r}")
    if (positive and value <= 0) or value < 0:
        raise ClusterError(f"{where}: must be {'positive' if positive else 'zero or more'}, got {value!r}")
    return float(value)


def _host(where: str, data: Any, name: str | None) -> DeviceSpec:
    if not isinstance(data, Mapping):
        raise ClusterError(f"{where}: expected a mapping with cpu, bandwidth_mbit, latency_ms")
    allowed = {"cpu", "bandwidth_mbit", "latency_ms"} | ({"name"} if name is None else set())
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ClusterError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    for key in sorted(allowed):
        if key not in data:
            raise ClusterError(f"{where}: missing field {key}")
    if name is None:
        name = data["name"]
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ClusterError(f"{where}.name: expected letters, digits, '-' or '_', got {name!r}")
    return DeviceSpec(
        name,
        _number(f"{where}.cpu", data["cpu"], positive=True),
        Link(
            _number(f"{where}.bandwidth_mbit", data["bandwidth_mbit"], positive=True),
            _number(f"{where}.latency_ms", data["latency_ms"], positive=False),
        ),
    )


def parse_cluster(data: Any, source: str = "cluster") -> ClusterSpec:
    """Validate a decoded cluster file."""
    if not isinstance(data, Mapping):
        raise ClusterError(f"{source}: expected a mapping at the top level")
    unknown = sorted(set(data) - {"name", "broker", "devices", "emulate"})
    if unknown:
        raise ClusterError(f"{source}: unknown field(s) {', '.join(map(str, unknown))}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ClusterError(f"{source}: missing or empty name")
    if "broker" not in data:
        raise ClusterError(f"{source}: missing broker")
    broker = _host(f"{source}: broker", data["broker"], "broker")
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices:
        raise ClusterError(f"{source}: devices must be a non-empty list")
    specs = tuple(_host(f"{source}: devices[{i}]", d, None) for i, d in enumerate(devices))
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
