"""The project's processes on an emulated cluster: broker, relays, agents, orchestrator."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from edgeci_mqtt.broker.launch import BrokerProcess, ProcessGroup
from edgeci_mqtt.emulation.network import EmulatedCluster, down, up
from edgeci_mqtt.planner.cluster import ClusterSpec

__all__ = ["EmulatedRun", "emulated_run"]

BROKER_PORT = 1883
RELAY_PORT = 1883  # on each device's own loopback


@dataclass
class EmulatedRun:
    cluster: EmulatedCluster
    broker: BrokerProcess
    group: ProcessGroup

    def url(self, user: str) -> str:
        """A broker URL for a process in the broker host's namespace."""
        return self.broker.url(user, self.cluster.hub_address)

    def in_hub(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.cluster.hub, *command]


@contextmanager
def emulated_run(
    spec: ClusterSpec,
    workdir: Path,
    models: str,
    prefix: str = "ecx",
    net: int = 77,
    strategy: str = "flow",
    timeout: float = 600.0,
) -> Iterator[EmulatedRun]:
    """Bring the cluster up, start everything in its namespace and cgroup, wait until the
    agents are online and the orchestrator is ready; tear it all down on exit."""
    cluster = up(spec, prefix, net)
    names = [d.name for d in spec.devices]
    group = ProcessGroup(workdir)
    broker = None
    try:
        broker = BrokerProcess(
            workdir / "broker",
            names,
            port=BROKER_PORT,
            bind="0.0.0.0",
            wrap=lambda cmd: [*_hub(cluster), *cmd],
            orchestrators=(prefix,),
            clients=("client", "stream"),
        )
        for index, device in enumerate(spec.devices):
            relay = [
                sys.executable,
                "-m",
                "edgeci_mqtt.emulation.relay",
                "--listen",
                f"127.0.0.1:{RELAY_PORT}",
                "--target",
                f"{cluster.hub_address}:{BROKER_PORT}",
                "--delay-ms",
                str(device.link.latency_ms),
            ]
            group.start_command(f"relay-{device.name}", ["ip", "netns", "exec", cluster.namespace(index), *relay])
            group.start(
                device.name,
                "device",
                "--broker",
                broker.url(device.name, "127.0.0.1", RELAY_PORT),
                "--models",
                models,
                *(("--medium", f"{m.name}:{m.bandwidth_mbit:g}") if (m := device.link.medium) else ()),
                wrap=partial(_inside, cluster, index),
            )
        group.start(
            "orchestrator",
            "orchestrator",
            "--broker",
            broker.url(prefix, cluster.hub_address),
            "--strategy",
            strategy,
            "--broker-mbit",
            str(spec.broker.link.bandwidth_mbit),
            *(a for m in models.split(",") for a in ("--model", m)),
            wrap=partial(_inside, cluster, None),
        )
        for name in names:
            group.wait_for_log(name, "online, holding", timeout=timeout)
        group.wait_for_log("orchestrator", "ready", timeout=timeout)
        yield EmulatedRun(cluster, broker, group)
    finally:
        group.close()
        if broker is not None:
            broker.stop()
        down(prefix)


def _inside(cluster: EmulatedCluster, index: int | None, command: list[str]) -> list[str]:
    return cluster.in_namespace(index, *command)


def _hub(cluster: EmulatedCluster) -> list[str]:
    return ["ip", "netns", "exec", cluster.hub]
