"""The simulator's comparison of every strategy on every reference cluster.

These are predictions (the discrete-event simulator over a profile measured on this
machine, each device at its cluster CPU share), not measurements of a running
cluster; bench/cluster_bench.py measures. Writes the tables into docs/BENCHMARKS.md
and a Gantt chart per model and cluster into docs/img/.

    python -m bench.simulate_clusters [--profile host.yaml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.report import DOCS, host_profile, machine_line, write_section
from edgeci_mqtt.cli.simulate_cmd import summary_rows
from edgeci_mqtt.models import skeleton_chain
from edgeci_mqtt.planner.cluster import REFERENCE_CLUSTERS, load_cluster
from edgeci_mqtt.planner.costs import TaskWork
from edgeci_mqtt.planner.environment import environment_from_cluster
from edgeci_mqtt.planner.strategies import context_for, make_plan
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy
from edgeci_mqtt.sim.gantt import write_gantt
from edgeci_mqtt.sim.simulator import simulate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path)
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
    for model in ("vgg16", "resnet34"):
        chain = skeleton_chain(model).spec(224, 224)
        for name in REFERENCE_CLUSTERS:
            print(f"{model} on {name} ...", file=sys.stderr, flush=True)
            cluster = load_cluster(name)
            env = environment_from_cluster(cluster, host)
            ctx = context_for(chain, env)
            work = TaskWork(chain.stages, chain.shapes)
            results = {s: simulate(make_plan(Strategy(s), ctx), env, work) for s in STRATEGY_NAMES}
            lines += ["", f"### {model} on {name} ({len(cluster.devices)} devices)", "",
                      "| strategy | makespan (ms) | speed-up vs local | ratio vs best baseline |",
                      "|---|---:|---:|---:|"]  # fmt: skip
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in summary_rows(results)]
            if name != "swarm64":
                image = DOCS / "img" / f"gantt-sim-{model}-{name}.png"
                write_gantt({s: r.timeline for s, r in results.items()}, [d.name for d in cluster.devices], image)
                lines += ["", f"![Gantt]({image.relative_to(DOCS)})"]
    write_section("simulate_clusters", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
