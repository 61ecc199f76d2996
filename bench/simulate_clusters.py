"""The simulator's comparison of every strategy on every reference cluster and on 50 seeded
random clusters (``edgeci cluster random``: 3-8 devices, every fifth with a shared medium).

These are predictions (the discrete-event simulator over a profile measured on this
machine, each device at its cluster CPU share), not measurements of a running
cluster; bench/cluster_bench.py measures. Writes the tables into docs/BENCHMARKS.md
and a Gantt chart per model and cluster into docs/img/.

    python -m bench.simulate_clusters [--profile host.yaml] [--random 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench.report import DOCS, host_profile, machine_line, write_section
from edgeci_mqtt.cli.simulate_cmd import summary_rows
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.models import skeleton_chain
from edgeci_mqtt.planner.cluster import REFERENCE_CLUSTERS, ClusterSpec, load_cluster
from edgeci_mqtt.planner.costs import TaskWork
from edgeci_mqtt.planner.environment import environment_from_cluster
from edgeci_mqtt.planner.random_clusters import random_cluster
from edgeci_mqtt.planner.strategies import context_for
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy
from edgeci_mqtt.sim.choice import served_plan
from edgeci_mqtt.sim.gantt import write_gantt
from edgeci_mqtt.sim.simulator import SimResult, simulate

MODELS = ("vgg16", "resnet34")
WITHIN = 0.02
"""``flow`` counts as the best strategy on a cluster when within 2 % of it."""


def random_clusters(count: int) -> list[ClusterSpec]:
    """Seeds ``0 .. count - 1``: 3-8 devices in turn, every fifth behind a shared medium."""
    return [random_cluster(seed, 3 + seed % 6, shared_medium=seed % 5 == 4) for seed in range(count)]


def simulate_all(model: str, cluster: ClusterSpec, host: DeviceProfile) -> dict[str, SimResult]:
    """One 224x224 inference of ``model`` on idle ``cluster``, as each strategy serves it, simulated."""
    chain = skeleton_chain(model).spec(224, 224)
    env = environment_from_cluster(cluster, host)
    ctx = context_for(chain, env)
    work = TaskWork(chain.stages, chain.shapes)
    return {s: simulate(served_plan(Strategy(s), ctx), env, work) for s in STRATEGY_NAMES}


def compute_bound(cluster: ClusterSpec) -> float:
    """Σcpu / max cpu: the speed-up over the fastest device that compute alone allows."""
    cpus = [d.cpu for d in cluster.devices]
    return sum(cpus) / max(cpus)


def random_section(count: int, host: DeviceProfile) -> list[str]:
    """The distribution over ``count`` random clusters: ``flow`` over ``local`` (against the
    compute bound) and against the best other strategy, per model, then every cluster."""
    clusters = random_clusters(count)
    lines = ["", f"### {count} seeded random clusters (predictions)", ""]
    rows: list[str] = []
    for model in MODELS:
        over_local, over_bound, to_best, best_names = [], [], [], []
        for cluster in clusters:
            print(f"{model} on {cluster.name} ...", file=sys.stderr, flush=True)
            results = simulate_all(model, cluster, host)
            flow = results["flow"].makespan_s
            other, best = min((r.makespan_s, s) for s, r in results.items() if s != "flow")
            over_local.append(results["local"].makespan_s / flow)
            over_bound.append(over_local[-1] / compute_bound(cluster))
            to_best.append(flow / other)
            best_names.append(best)
            medium = cluster.media[0].bandwidth_mbit if cluster.media else None
            rows.append(
                f"| {model} | {cluster.name} | {len(cluster.devices)} | {compute_bound(cluster):.2f} | "
                f"{'-' if medium is None else f'{medium:g}'} | {flow * 1e3:.0f} | {over_local[-1]:.2f}x | "
                f"{best} {to_best[-1]:.3f} |"
            )
        within = sum(r <= 1 + WITHIN for r in to_best)
        lines += [
            f"- **{model}**: `flow` over `local` median {statistics.median(over_local):.2f}x (worst "
            f"{min(over_local):.2f}x); that speed-up over the compute bound Σcpu/max cpu median "
            f"{statistics.median(over_bound):.2f} (worst {min(over_bound):.2f}); `flow` against the best other "
            f"strategy median {statistics.median(to_best):.3f} (worst {max(to_best):.3f}); within "
            f"{WITHIN:.0%} of the best strategy on {within} of {count} clusters (target: 48 of 50).",
        ]
    lines += [
        "",
        "| model | cluster | devices | Σcpu/max cpu | medium (Mbit/s) | `flow` (ms) | over `local` | "
        "best other, `flow`/it |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        *rows,
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--random", type=int, default=50, help="seeded random clusters to simulate (default 50)")
    args = parser.parse_args()
    host = host_profile(args.profile)
    lines = [
        "## Simulated comparison of strategies (predictions)",
        "",
        f"`python -m bench.simulate_clusters` on {machine_line()}: host profile measured with one thread, each "
        "device at its cluster `cpu` share of it, the orchestrator at the broker's share. Makespan of one "
        "224x224 inference in the simulator; speed-up over `local`; ratio to the best baseline (below 1: "
        "faster than every baseline).",
    ]
    for model in MODELS:
        for name in REFERENCE_CLUSTERS:
            print(f"{model} on {name} ...", file=sys.stderr, flush=True)
            cluster = load_cluster(name)
            results = simulate_all(model, cluster, host)
            lines += ["", f"### {model} on {name} ({len(cluster.devices)} devices)", "",
                      "| strategy | makespan (ms) | speed-up vs local | ratio vs best baseline |",
                      "|---|---:|---:|---:|"]  # fmt: skip
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in summary_rows(results)]
            if name != "swarm64":
                image = DOCS / "img" / f"gantt-sim-{model}-{name}.png"
                write_gantt({s: r.timeline for s, r in results.items()}, [d.name for d in cluster.devices], image)
                lines += ["", f"![Gantt]({image.relative_to(DOCS)})"]
    if args.random:
        lines += random_section(args.random, host)
    write_section("simulate_clusters", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
