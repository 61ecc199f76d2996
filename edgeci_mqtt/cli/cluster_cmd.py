"""``edgeci cluster up|down|status|random``: build or remove an emulated edge cluster on this host,
or write a seeded random cluster file."""

from __future__ import annotations

import argparse

from edgeci_mqtt.emulation.network import down, leftovers, up
from edgeci_mqtt.planner.cluster import cluster_yaml, load_cluster
from edgeci_mqtt.planner.random_clusters import RANGES, random_cluster

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "cluster",
        help="build or remove an emulated edge cluster (root), or write a random cluster file",
        description="up: one network namespace per device joined to the broker host's namespace by a veth pair, "
        "tc tbf shaping per direction and on the broker link, one CPU cgroup per device (and one for the "
        "orchestrator) with the cluster file's cpu share; devices behind a shared medium reach the broker "
        "through one more shaped link. down: remove everything with the prefix (idempotent). "
        "Link latency is added by a relay in each device namespace (python -m edgeci_mqtt.emulation.relay). "
        f"random: a seeded random cluster as YAML (CPU shares {RANGES.cpu[0]}-{RANGES.cpu[1]}, links "
        f"{RANGES.bandwidth_mbit[0]:g}-{RANGES.bandwidth_mbit[1]:g} Mbit/s, latencies "
        f"{RANGES.latency_ms[0]}-{RANGES.latency_ms[1]:g} ms, log-uniform and independent).",
    )
    parser.add_argument("action", choices=["up", "down", "status", "random"])
    parser.add_argument("--cluster", default="hetero4", help="cluster file or reference name (for up)")
    parser.add_argument("--prefix", default="ecx", help="name prefix of everything created (default ecx)")
    parser.add_argument("--net", type=int, default=77, help="second octet of the 10.x.0.0/16 addresses")
    parser.add_argument("--seed", type=int, default=0, help="random: the seed (default 0)")
    parser.add_argument("--devices", type=int, default=6, help="random: how many devices (default 6)")
    parser.add_argument(
        "--shared-medium", action="store_true", help="random: put 2-4 devices behind one Wi-Fi-like shaped link"
    )
    parser.add_argument(
        "--cpu-budget",
        type=float,
        default=1.0,
        help="random: the most the CPU shares may add up to (default 1.0, what an emulated cluster fits "
        "beside the broker on 2 cores); 0: no budget, a cluster for simulation only",
    )
    parser.add_argument("--out", help="random: write the YAML here (default: standard output)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "random":
        spec = random_cluster(
            args.seed, args.devices, shared_medium=args.shared_medium, cpu_budget=args.cpu_budget or None
        )
        comment = f"edgeci cluster random --seed {args.seed} --devices {args.devices}"
        comment += " --shared-medium" * args.shared_medium + f" --cpu-budget {args.cpu_budget:g}"
        text = cluster_yaml(spec, comment)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as out:
                out.write(text)
            print(f"wrote {spec.name} ({len(spec.devices)} devices) to {args.out}")
        else:
            print(text, end="")
    elif args.action == "down":
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
