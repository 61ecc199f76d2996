"""How long planning takes: every strategy, both models, every reference cluster.

"cold" builds the planner's stage prices from scratch (first plan after start-up);
"re-plan" is the plan after one device (the first in the file) leaves, reusing the
stage prices as a running orchestrator does. Medians of --repeats runs. Writes the
table into docs/BENCHMARKS.md.

    python -m bench.plan_speed [--repeats 7] [--profile host.yaml]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.report import host_profile, machine_line, median_seconds, write_section
from edgeci_mqtt.models import StageChain, load_chain
from edgeci_mqtt.planner.cluster import REFERENCE_CLUSTERS, load_cluster
from edgeci_mqtt.planner.costs import RowModel
from edgeci_mqtt.planner.environment import Environment, environment_from_cluster
from edgeci_mqtt.planner.strategies import context_for, make_plan
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy

TARGET_MS = 50.0


def plan_once(strategy: Strategy, chain: StageChain, env: Environment, costs: RowModel | None) -> None:
    make_plan(strategy, context_for(chain.spec(224, 224), env, costs=costs))


def median_ms(fn: Callable[[], None], repeats: int) -> float:
    return 1e3 * median_seconds(fn, repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    host = host_profile(args.profile)
    lines = [
        "## Planning speed",
        "",
        f"`python -m bench.plan_speed --repeats {args.repeats}` on {machine_line()}. Milliseconds, median of "
        f"{args.repeats} runs. *cold*: stage prices built from scratch; *re-plan*: after the first device of the "
        "cluster leaves, stage prices reused. Targets: `edgeci` re-plans ResNet-34 on swarm64 within "
        f"{TARGET_MS:.0f} ms (issue 9); `flow` plans and re-plans VGG-16 and ResNet-34 on swarm64 within "
        f"{TARGET_MS:.0f} ms (issue 11).",
        "",
        "| model | cluster | devices | " + " | ".join(f"{s} cold / re-plan" for s in STRATEGY_NAMES) + " |",
        "|---|---|---:|" + "---:|" * len(STRATEGY_NAMES),
    ]
    verdicts = []
    for model in ("vgg16", "resnet34"):
        chain = load_chain(model)
        for cluster_name in REFERENCE_CLUSTERS:
            cluster = load_cluster(cluster_name)
            env = environment_from_cluster(cluster, host)
            smaller = env.without(cluster.devices[0].name)
            cells = []
            for name in STRATEGY_NAMES:
                print(f"{model} {cluster_name} {name} ...", file=sys.stderr, flush=True)
                strategy = Strategy(name)
                cold = median_ms(partial(plan_once, strategy, chain, env, None), args.repeats)
                warm = context_for(chain.spec(224, 224), env)
                make_plan(strategy, warm)
                replan = median_ms(partial(plan_once, strategy, chain, smaller, warm.costs), args.repeats)
                cells.append(f"{cold:.1f} / {replan:.1f}")
                if cluster_name == "swarm64" and (name == "flow" or (model, name) == ("resnet34", "edgeci")):
                    met = "met" if max(cold, replan) <= TARGET_MS else "not met"
                    verdicts.append(
                        f"- Target ({TARGET_MS:.0f} ms, {model} on swarm64, {name}): {met}, "
                        f"cold {cold:.1f} ms, re-plan {replan:.1f} ms."
                    )
            lines.append(f"| {model} | {cluster_name} | {len(cluster.devices)} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    lines += ["", *verdicts]
    write_section("plan_speed", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
