"""``edgeci simulate``: every strategy replayed on one cluster, side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeci_mqtt.cli.common import add_host_profile, add_model, host_profile, model_chain
from edgeci_mqtt.cli.table import format_table
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.planner.cluster import load_cluster
from edgeci_mqtt.planner.costs import TaskWork
from edgeci_mqtt.planner.environment import environment_from_cluster
from edgeci_mqtt.planner.strategies import context_for
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy
from edgeci_mqtt.sim.choice import served_plan
from edgeci_mqtt.sim.gantt import write_gantt
from edgeci_mqtt.sim.simulator import SimResult, simulate

__all__ = ["BASELINES", "register", "run", "summary_rows"]

BASELINES = ("modnn", "deepthings", "aofl")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "simulate",
        help="compare strategies on a cluster in the simulator",
        description="Plan and replay one inference with each strategy on a cluster (file or reference name) "
        "and print the makespans, the speed-up over local and the ratio to the best baseline.",
    )
    add_model(parser)
    parser.add_argument("--cluster", required=True, help="cluster YAML file or reference cluster name")
    parser.add_argument("--strategies", default="all", help="comma-separated strategies, or 'all' (default)")
    parser.add_argument("--gantt", type=Path, help="write a Gantt chart (PNG) of every strategy")
    add_host_profile(parser)
    parser.set_defaults(run=run)


def summary_rows(results: dict[str, SimResult]) -> list[list[object]]:
    """Rows of strategy, makespan, speed-up over local, ratio to the best baseline."""
    local = results.get("local")
    baselines = [results[b].makespan_s for b in BASELINES if b in results]
    best = min(baselines) if baselines else None
    rows: list[list[object]] = []
    for name, result in results.items():
        span = result.makespan_s
        rows.append(
            [
                name,
                f"{span * 1e3:.1f}",
                f"{local.makespan_s / span:.2f}x" if local else "-",
                f"{span / best:.3f}" if best else "-",
            ]
        )
    return rows


def run(args: argparse.Namespace) -> int:
    names = list(STRATEGY_NAMES) if args.strategies == "all" else [s.strip() for s in args.strategies.split(",")]
    unknown = [n for n in names if n not in STRATEGY_NAMES]
    if unknown:
        raise EdgeCIError(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGY_NAMES)}")
    strategies = [Strategy.parse(n) for n in names]
    cluster = load_cluster(args.cluster)
    env = environment_from_cluster(cluster, host_profile(args))
    name, chain, size = model_chain(args, skeleton=True)  # a built-in model's geometry only: no weights
    ctx = context_for(chain.spec(size, size), env)
    work = TaskWork(ctx.chain.stages, ctx.chain.shapes)
    results = {}
    for strategy in strategies:
        print(f"planning and simulating {strategy} ...", file=sys.stderr, flush=True)
        results[str(strategy)] = simulate(served_plan(strategy, ctx), env, work)
    print(f"{name} on {cluster.name} ({len(cluster.devices)} devices), simulated")
    print(
        format_table(
            ["strategy", "makespan (ms)", "speed-up vs local", "ratio vs best baseline"], summary_rows(results)
        )
    )
    if args.gantt:
        write_gantt({n: r.timeline for n, r in results.items()}, [d.name for d in cluster.devices], args.gantt)
        print(f"Gantt chart written to {args.gantt}")
    return 0
