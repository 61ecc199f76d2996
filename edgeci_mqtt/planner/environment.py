"""What the planner knows about the cluster at planning time.

In the runtime this comes from the devices' birth messages (measured profiles and
links); in simulation from a cluster file, each device's profile being the host's
profile scaled by its CPU share. Either way the planner sees the same small types.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Annotated

from edgeci_mqtt.core.bounds import MaxLen
from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.core.work import LINEAR_CHUNK_ROWS, chunks_of
from edgeci_mqtt.errors import ClusterError, PlanningError
from edgeci_mqtt.planner.cluster import ClusterSpec, Link
from edgeci_mqtt.planner.profile import DeviceProfile

__all__ = ["DeviceView", "Environment", "TailRows", "environment_from_cluster"]

MESSAGE_OVERHEAD_BYTES = 256
"""MQTT fixed header, topic and msgpack envelope of one task or result message."""

MESSAGE_OPS = 50
"""Per-op overheads (:attr:`DeviceProfile.op_overhead_s`) that one device-to-device
message costs its sender, and again its receiver: paho's threads, msgpack, the copies
and the thread hand-offs around them. Measured on the emulated 0.25-CPU devices:
publishing a ``flow`` step's two halo messages took 8-20 ms, 50-120 of their op
overheads per message (about 10 on an idle host, where the scheduler does not get in
the way)."""

FLOW_STEP_MESSAGES = 4
"""Messages a ``flow`` strip handles per block: the halo from its neighbours above and
below, and its own edge rows to them."""


MAX_TAIL_RUNS = 256
"""Runs of held rows a device announces at most (it holds rows in chunks, and on a budget)."""


@dataclass(frozen=True)
class TailRows:
    """The tail's fully connected weights a device has made for one model: runs of the
    first layer's rows (in order, apart), and whether it has the layers after it.

    A device holds no classifier at boot and makes what a placement gives it (seconds for
    a slice of VGG-16's first layer on a 0.2-CPU board), so what it holds decides what a
    placement costs: the planner prices the chunks of :data:`LINEAR_CHUNK_ROWS` rows a
    device lacks (:meth:`missing_rows`)."""

    first: Annotated[tuple[Span, ...], MaxLen(MAX_TAIL_RUNS)] = ()
    rest: bool = False

    def __post_init__(self) -> None:
        if any(run.start < 0 or not run.size for run in self.first) or any(
            a.stop >= b.start for a, b in itertools.pairwise(self.first)
        ):
            raise PlanningError(f"held rows {self.first} are not in order and apart")

    def missing_rows(self, features: Span, total: int) -> int:
        """Rows a device holding these must make to compute ``features`` of a first layer
        of ``total`` features: the whole chunks they touch that it does not hold."""
        missing = 0
        for chunk in chunks_of(features):
            rows = Span(chunk * LINEAR_CHUNK_ROWS, min(total, (chunk + 1) * LINEAR_CHUNK_ROWS))
            at = bisect.bisect_right(self._starts, rows.start) - 1  # the one run that could hold it
            if at < 0 or not self.first[at].contains(rows):
                missing += rows.size
        return missing

    @cached_property
    def _starts(self) -> list[int]:
        return [run.start for run in self.first]

    @classmethod
    def of_chunks(cls, chunks: set[int] | frozenset[int], total: int, rest: bool) -> TailRows:
        """From the indexes of the chunks held, merged into runs (the first
        :data:`MAX_TAIL_RUNS`: announcing fewer rows than held only costs a price too high)."""
        runs: list[Span] = []
        for chunk in sorted(chunks):
            start, stop = chunk * LINEAR_CHUNK_ROWS, min(total, (chunk + 1) * LINEAR_CHUNK_ROWS)
            if runs and runs[-1].stop == start:
                runs[-1] = Span(runs[-1].start, stop)
            else:
                runs.append(Span(start, stop))
        return cls(tuple(runs[:MAX_TAIL_RUNS]), rest)


@dataclass(frozen=True)
class DeviceView:
    """One device as the planner sees it: speed, link to the broker, work already queued,
    the bytes of tail weights it can take on (None: not announced, no limit) and the tail
    weights it has made (None: not announced, nothing to make)."""

    name: str
    profile: DeviceProfile
    link: Link
    queue_s: float = 0.0
    memory_bytes: int | None = None
    tail: TailRows | None = None


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
