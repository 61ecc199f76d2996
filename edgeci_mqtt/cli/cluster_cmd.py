"""``edgeci cluster up|down``: build or remove an emulated edge cluster on this host."""

from __future__ import annotations

import argparse

from edgeci_mqtt.emulation.network import down, leftovers, up
from edgeci_mqtt.planner.cluster import load_cluster

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "cluster",
        help="build or remove an emulated edge cluster (root)",
        description="up: one network namespace per device joined to the broker host's namespace by a veth pair, "
        "tc tbf shaping per direction and on the broker link, one CPU cgroup per device (and one for the "
        "orchestrator) with the cluster file's cpu share. down: remove everything with the prefix (idempotent). "
        "Link latency is added by a relay in each device namespace (python -m edgeci_mqtt.emulation.relay).",
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--cluster", default="hetero4", help="cluster file or reference name (for up)")
    parser.add_argument("--prefix", default="ecx", help="name prefix of everything created (default ecx)")
    parser.add_argument("--net", type=int, default=77, help="second octet of the 10.x.0.0/16 addresses")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "down":
        down(args.prefix)
        print(f"removed everything named {args.prefix}-*")
    elif args.action == "status":
        print("\n".join(leftovers(args.prefix)) or f"nothing named {args.prefix}-*")
    else:
        cluster = up(load_cluster(args.cluster), args.prefix, args.net)
        print(
            f"{cluster.spec.name}: broker host namespace {cluster.hub} at {cluster.hub_address} "
            f"(cgroup {cluster.cgroup(None)}, cpu {cluster.spec.broker.cpu})"
        )
        for index, device in enumerate(cluster.spec.devices):
            print(
                f"  {device.name}: namespace {cluster.namespace(index)} at {cluster.address(index)}, "
                f"{device.link.bandwidth_mbit:g} Mbit/s, {device.link.latency_ms:g} ms (relay), cpu {device.cpu}"
            )
    return 0
