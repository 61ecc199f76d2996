"""An emulated edge cluster on one Linux host: namespaces, veth, tc shaping, CPU quotas.

Layout for a cluster file (everything named ``<prefix>-…``):

* namespace ``<prefix>-hub`` holds the broker host: a bridge ``<prefix>-br`` with address
  ``10.<net>.0.1``; its egress qdisc (``tbf``) is the broker link's bandwidth;
* namespace ``<prefix>-<i>`` per device, joined to the bridge by a veth pair; both ends
  shaped with ``tbf`` at the device's bandwidth (one per direction);
* a shared medium ``k`` of the cluster file (one Wi-Fi access point) is a namespace
  ``<prefix>-m<k>`` holding a bridge without an address (so the hub cannot answer for it
  and short-cut the medium): the devices behind it join that bridge instead, and it reaches
  the broker's bridge through one veth pair ``<prefix>-m<k>a``/``b`` shaped at the medium's
  bandwidth each way, so their transfers share it (full duplex: Wi-Fi's half-duplex airtime
  is not emulated);
* cgroup ``<prefix>-<i>`` per device and ``<prefix>-hub`` for the orchestrator, with a
  CPU quota of the cluster file's ``cpu`` share (v1 ``cpu.cfs_quota_us`` or v2 ``cpu.max``).

``tc netem`` does not exist on every kernel (it does not here), so link latency is added
by a small relay in each device namespace (:mod:`edgeci_mqtt.emulation.relay`) that holds
every chunk for the one-way latency in each direction.

:func:`down` removes everything carrying the prefix and is idempotent, so it also cleans
up after a crash.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgeci_mqtt.errors import EmulationError
from edgeci_mqtt.planner.cluster import ClusterSpec

__all__ = ["CgroupRoot", "EmulatedCluster", "down", "leftovers", "up"]

TOOLS = ("ip", "tc")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise EmulationError(f"{' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def _check_host() -> None:
    if os.geteuid() != 0:
        raise EmulationError("the emulated cluster needs root (network namespaces, tc, cgroups)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise EmulationError(f"missing tool(s): {', '.join(missing)} (Debian: apt-get install iproute2)")


MIN_CFS_PERIOD_US = 10_000  # a floor by choice: shorter periods cost scheduler overhead for little gain
MIN_CFS_QUOTA_US = 1_000  # the kernel refuses smaller quotas
MAX_CFS_PERIOD_US = 1_000_000  # and longer periods


def cfs_period_quota(share: float) -> tuple[int, int]:
    """CFS period and quota (µs) that give ``share`` of one CPU as evenly as the kernel allows.

    A quota is a budget per period: the group runs at full speed until it is spent,
    then waits for the next period. With the default 100 ms period a 0.25 device runs
    25 ms flat out and then stalls 75 ms, so a 20 ms task finishes at full speed and a
    30 ms one takes 105 ms; a real board is uniformly slow instead. A 10 ms period, or
    the shortest whose quota is still the kernel's 1 ms minimum, comes closer to that.
    """
    lowest = MIN_CFS_QUOTA_US / MAX_CFS_PERIOD_US
    if not lowest <= share <= 64:
        raise EmulationError(f"cpu share {share} is not in [{lowest}, 64]: the kernel cannot emulate it")
    period = max(MIN_CFS_PERIOD_US, math.ceil(MIN_CFS_QUOTA_US / share))
    return period, max(MIN_CFS_QUOTA_US, round(share * period))


@dataclass(frozen=True)
class CgroupRoot:
    """Where CPU cgroups live: v1 (``cpu`` controller mount) or v2 (unified)."""

    path: Path
    version: int

    @classmethod
    def find(cls) -> CgroupRoot:
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists() or ((v1 / "cgroup.procs").exists() and v1.is_dir()):
            return cls(v1, 1)
        v2 = Path("/sys/fs/cgroup")
        if (v2 / "cgroup.controllers").exists():
            return cls(v2, 2)
        raise EmulationError("no CPU cgroup controller found (neither v1 cpu nor v2)")

    def create(self, name: str, share: float) -> Path:
        group = self.path / name
        group.mkdir(exist_ok=True)
        period_us, quota = cfs_period_quota(share)
        if self.version == 1:
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {period_us}")
        return group

    def command(self, name: str, *command: str) -> list[str]:
        """``command`` started inside cgroup ``name`` (the shell joins it, then execs)."""
        procs = self.path / name / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "edgeci-cgroup", *command]

    def remove(self, name: str) -> None:
        group = self.path / name
        if not group.is_dir():
            return
        for _ in range(50):  # killed processes leave the group asynchronously
            try:
                pids = (group / "cgroup.procs").read_text().split()
            except FileNotFoundError:  # removed meanwhile (another down of the same prefix)
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            try:
                group.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        raise EmulationError(f"cannot remove cgroup {group}")

    def names(self, prefix: str) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_dir() and p.name.startswith(prefix + "-"))


@dataclass(frozen=True)
class EmulatedCluster:
    spec: ClusterSpec
    prefix: str
    net: int

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    @property
    def hub_address(self) -> str:
        return f"10.{self.net}.0.1"

    @property
    def bridge(self) -> str:
        """The broker host's link to every device (in the hub namespace): its byte counters
        are what crosses the broker host's link, both directions."""
        return f"{self.prefix}-br"

    def namespace(self, index: int) -> str:
        return f"{self.prefix}-{index}"

    def address(self, index: int) -> str:
        return f"10.{self.net}.{1 + (index + 1) // 250}.{(index + 1) % 250 + 2}"

    def cgroup(self, index: int | None) -> str:
        return self.hub if index is None else self.namespace(index)

    def in_namespace(self, index: int | None, *command: str) -> list[str]:
        """``command`` run inside a device's (or, for None, the hub's) namespace and cgroup."""
        namespace = self.hub if index is None else self.namespace(index)
        return CgroupRoot.find().command(self.cgroup(index), "ip", "netns", "exec", namespace, *command)


def _tbf(namespace: str, device: str, mbit: float) -> None:
    burst = max(32_000, int(mbit * 1e6 / 8 / 250))  # 4 ms of traffic, at least 32 kB
    _run("ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate",
         f"{mbit}mbit", "burst", str(burst), "latency", "500ms")  # fmt: skip


def _medium(cluster: EmulatedCluster, index: int, mbit: float) -> str:
    """Namespace ``<prefix>-m<index>`` with a bridge of the same name, joined to the broker's
    bridge by a veth pair shaped at ``mbit`` each way; returns its name (where the devices
    behind it plug in)."""
    hub, name = cluster.hub, f"{cluster.prefix}-m{index}"
    near, far = f"{name}a", f"{name}b"
    _run("ip", "netns", "add", name)
    _run("ip", "-n", name, "link", "add", name, "type", "bridge")
    _run("ip", "link", "add", near, "netns", name, "type", "veth", "peer", "name", far, "netns", hub)
    _run("ip", "-n", name, "link", "set", near, "master", name)
    _run("ip", "-n", hub, "link", "set", far, "master", cluster.bridge)
    for namespace, link in ((name, name), (name, near), (hub, far)):
        _run("ip", "-n", namespace, "link", "set", link, "up")
    _tbf(name, near, mbit)  # towards the broker
    _tbf(hub, far, mbit)  # towards the devices
    return name


def up(spec: ClusterSpec, prefix: str = "ecx", net: int = 77) -> EmulatedCluster:
    """Build the namespaces, links, shaping and cgroups of ``spec`` (tearing down leftovers first)."""
    _check_host()
    if not 0 < net < 255 or not prefix.isalnum() or len(prefix) > 6:
        raise EmulationError("prefix must be 1-6 letters/digits and net in 1..254")
    down(prefix)
    cluster = EmulatedCluster(spec, prefix, net)
    root = CgroupRoot.find()
    hub = cluster.hub
    try:
        _run("ip", "netns", "add", hub)
        _run("ip", "-n", hub, "link", "set", "lo", "up")
        bridge = cluster.bridge
        _run("ip", "-n", hub, "link", "add", bridge, "type", "bridge")
        _run("ip", "-n", hub, "addr", "add", f"{cluster.hub_address}/16", "dev", bridge)
        _run("ip", "-n", hub, "link", "set", bridge, "up")
        _tbf(hub, bridge, spec.broker.link.bandwidth_mbit)
        root.create(cluster.cgroup(None), spec.broker.cpu)
        joins = {medium: _medium(cluster, k, medium.bandwidth_mbit) for k, medium in enumerate(spec.media)}
        for index, device in enumerate(spec.devices):
            ns, inner, outer = cluster.namespace(index), f"{prefix}-{index}d", f"{prefix}-{index}h"
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            medium = (
                joins.get(device.link.medium) if device.link.medium else None
            )  # the medium's namespace and bridge share its name
            switch, master = (medium, medium) if medium else (hub, bridge)
            _run("ip", "link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer, "netns", switch)
            _run("ip", "-n", ns, "addr", "add", f"{cluster.address(index)}/16", "dev", inner)
            _run("ip", "-n", ns, "link", "set", inner, "up")
            _run("ip", "-n", switch, "link", "set", outer, "master", master)
            _run("ip", "-n", switch, "link", "set", outer, "up")
            _tbf(ns, inner, device.link.bandwidth_mbit)
            _tbf(switch, outer, device.link.bandwidth_mbit)
            root.create(cluster.cgroup(index), device.cpu)
    except Exception:
        down(prefix)
        raise
    return cluster


def leftovers(prefix: str = "ecx") -> list[str]:
    """Namespaces, links and cgroups that carry the prefix (empty after :func:`down`)."""
    found = [n for n in _run("ip", "netns", "list", check=False).stdout.split() if n.startswith(prefix + "-")]
    found += [
        line.split(":")[1].strip().split("@")[0]
        for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines()
        if f" {prefix}-" in line
    ]
    with contextlib.suppress(EmulationError):
        found += CgroupRoot.find().names(prefix)
    return found


def down(prefix: str = "ecx") -> None:
    """Remove everything the prefix names: processes in its cgroups, cgroups, namespaces (with
    their links, bridge and qdiscs). Safe to call any number of times."""
    _check_host()
    try:
        root: CgroupRoot | None = CgroupRoot.find()
    except EmulationError:
        root = None
    for name in root.names(prefix) if root else []:
        root.remove(name)  # type: ignore[union-attr]
    for namespace in _run("ip", "netns", "list", check=False).stdout.split():
        if namespace.startswith(prefix + "-"):
            for pid in _run("ip", "netns", "pids", namespace, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            _run("ip", "netns", "del", namespace, check=False)
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        if f" {prefix}-" in line:
            _run("ip", "link", "del", line.split(":")[1].strip().split("@")[0], check=False)
