"""What the planner knows about the cluster at planning time.

In the runtime this comes from the devices' birth messages (measured profiles and
links); in simulation from a cluster file, each device's profile being the host's
profile scaled by its CPU share. Either way the planner sees the same small types.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.errors import ClusterError
from edgeci_mqtt.planner.cluster import ClusterSpec

__all__ = ["DeviceView", "Environment", "TailRows", "environment_from_cluster", "media_sharing"]

MESSAGE_OVERHEAD_BYTES = 256
"""MQTT fixed header, topic and msgpack envelope of one task or result message."""

MESSAGE_OPS = 50
"""Per-op overheads (:attr:`DeviceProfile.op_overhead_s`) that one device-to-device
message costs its sender, and again its receiver: paho's threads, msgpack, the copies
and the thread hand-offs around them. Set from CPU-limited devices, where each hand-off
between threads can wait for the scheduler, not from an idle host (docs/PLANNER.md,
`flow`)."""

FLOW_STEP_MESSAGES = 4
"""Messages a ``flow`` strip handles per block: the halo from its neighbours above and
below, and its own edge rows to them."""


@dataclass(frozen=True)
class DeviceView:
    """One device as the planner sees it: speed, link to the broker, work already queued,
    the bytes of tail weights it can take on (None: not announced, no limit) and the tail
    weights it has made (None: not announced, nothing to make). ``sharing``: how many of
    the environment's devices sit behind its link's medium (set by :class:`Environment`)."""

    name: str
    profile: DeviceProfile
    link: Link
    queue_s: float = 0.0
    memory_bytes: int | None = None
    tail: TailRows | None = None
    sharing: int = 1

    @property
    def bytes_per_s(self) -> float:
        """The rate its transfers are priced at: its own link's, or, behind a shared medium,
        its equal share of the medium if that is less. A strategy's phases (scatter, halo
        exchange, gather) move every device's bytes at about the same time, so the devices
        behind one medium move theirs together."""
        own = self.link.bytes_per_s
        medium = self.link.medium
        return own if medium is None else min(own, medium.bytes_per_s / self.sharing)


def media_sharing(devices: Iterable[DeviceView]) -> dict[str, int]:
    """How many of ``devices`` sit behind each shared medium, by its name (devices behind one
    access point name it alike): what each of them prices its transfers with (the
    orchestrator's plans, and the devices' bids, which the auction call tells it)."""
    return dict(Counter(d.link.medium.name for d in devices if d.link.medium is not None))


@dataclass(frozen=True)
class Environment:
    """Devices, the orchestrator's own compute, and the broker host's link."""

    devices: tuple[DeviceView, ...]
    orchestrator: DeviceProfile
    broker_link: Link

    def __post_init__(self) -> None:
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ClusterError(f"device names must be unique, got {names}")
        behind = media_sharing(self.devices)
        if behind or any(d.sharing != 1 for d in self.devices):  # who shares a medium here, counted once
            shared = tuple(
                replace(d, sharing=behind.get(d.link.medium.name, 1) if d.link.medium else 1) for d in self.devices
            )
            object.__setattr__(self, "devices", shared)

    def device(self, name: str) -> DeviceView:
        for view in self.devices:
            if view.name == name:
                return view
        raise ClusterError(f"no device {name!r} in the environment")

    def without(self, name: str) -> Environment:
        self.device(name)
        return replace(self, devices=tuple(d for d in self.devices if d.name != name))


def environment_from_cluster(cluster: ClusterSpec, host: DeviceProfile) -> Environment:
    """Devices of a cluster file, each running at its CPU share of the ``host`` profile."""
    return Environment(
        devices=tuple(DeviceView(d.name, host.scaled(d.cpu), d.link) for d in cluster.devices),
        orchestrator=host.scaled(cluster.broker.cpu),
        broker_link=cluster.broker.link,
    )
