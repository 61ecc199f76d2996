"""``edgeci plan``: the blocks, partitions and assignments a strategy chooses."""

from __future__ import annotations

import argparse

from edgeci_mqtt.cli.common import add_host_profile, add_model, host_profile, model_chain
from edgeci_mqtt.cli.table import format_table, human_bytes
from edgeci_mqtt.planner.cluster import load_cluster
from edgeci_mqtt.planner.costs import TaskWork
from edgeci_mqtt.planner.environment import environment_from_cluster
from edgeci_mqtt.planner.strategies import context_for
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy
from edgeci_mqtt.planner.tail import TailPlan
from edgeci_mqtt.sim.choice import plan_for
from edgeci_mqtt.sim.simulator import simulate

__all__ = ["register", "run"]


def tail_line(tail: TailPlan) -> str:
    """Where the plan runs the tail, in words."""
    if tail.on_orchestrator:
        return "tail on the orchestrator"
    if not tail.parts:
        return f"tail on {tail.finisher}"
    split = ", ".join(f"{d} {s.start}-{s.stop}" for d, s in tail.parts)
    return f"tail: first layer's features split over {split}; finished on {tail.finisher}"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "plan",
        help="show the plan of one strategy on a cluster",
        description="Plan one inference with a strategy on a cluster file (or a reference cluster name: "
        "homo4, hetero4, hetero8, swarm64) and print every block, task and device, with the "
        "planner's estimate and the simulator's replay.",
    )
    add_model(parser)
    parser.add_argument("--cluster", required=True, help="cluster YAML file or reference cluster name")
    parser.add_argument("--strategy", choices=list(STRATEGY_NAMES), default="edgeci")
    add_host_profile(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    strategy = Strategy.parse(args.strategy)
    cluster = load_cluster(args.cluster)
    env = environment_from_cluster(cluster, host_profile(args))
    name, chain, size = model_chain(args, skeleton=True)  # a built-in model's geometry only: no weights
    ctx = context_for(chain.spec(size, size), env)
    plan = plan_for(strategy, ctx)  # flow: the best of its candidates (docs/PLANNER.md)
    replay = simulate(plan, env, TaskWork(ctx.chain.stages, ctx.chain.shapes))
    chosen = f" (chose {plan.strategy}'s plan)" if plan.strategy != strategy else ""
    cut = ", blocks cut so their halo-free rows run first" if plan.overlap else ""
    cut += ", the image sent in bands" if plan.bands else ""
    print(f"{strategy} plan{chosen} of {name} ({plan.input_shape}) on {cluster.name}: {len(plan.blocks)} block(s){cut}")
    for index, block in enumerate(plan.blocks):
        first, last = ctx.chain.stages[block.block.start], ctx.chain.stages[block.block.stop - 1]
        where = "orchestrator" if block.placement == "orchestrator" else f"{block.dispatch} dispatch"
        print(
            f"\nblock {index}: stages {block.block} ({first.name} .. {last.name}), "
            f"{ctx.chain.shapes[block.block.start]} -> {ctx.chain.shapes[block.block.stop]}, {where}"
        )
        rows = [
            [
                t.device or "(pulled)",
                str(t.out_region),
                str(t.in_region),
                human_bytes(t.in_bytes),
                human_bytes(t.out_bytes),
            ]
            for t in block.tasks
        ]
        print(format_table(["device", "output region", "input region", "in", "out"], rows))
    print(f"\n{tail_line(plan.tail)}; devices used: {', '.join(plan.devices) or '(pulled tiles)'}")
    estimate = f"planner estimate {plan.predicted_s * 1e3:.1f} ms, " if plan.predicted_s else ""
    print(f"predicted time: {estimate}simulated {replay.makespan_s * 1e3:.1f} ms")
    return 0
