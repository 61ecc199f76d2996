"""Every strategy on emulated clusters, measured, with the simulator's prediction beside it.

For each cluster (default homo4, hetero4, hetero8): bring it up (namespaces, shaped links,
delaying relays, CPU quotas; see docs/EMULATION.md), start the broker, one agent per
device and the orchestrator in their namespaces and cgroups, then a driver in the broker
host's namespace runs warm-up inferences and ``--runs`` rounds of every strategy for
VGG-16 and ResNet-34, interleaved. The simulator replays each strategy's plan on the
devices' own published profiles and links. Writes docs/BENCHMARKS.md and raw JSON in
docs/bench/. Needs root.

    sudo python -m bench.cluster_bench [--clusters homo4,hetero4,hetero8] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench.report import DOCS, machine_line, write_section
from edgeci_mqtt.emulation.processes import EmulatedRun, emulated_run
from edgeci_mqtt.models import load_chain
from edgeci_mqtt.planner.cluster import Link, load_cluster
from edgeci_mqtt.planner.costs import TaskWork
from edgeci_mqtt.planner.environment import DeviceView, Environment
from edgeci_mqtt.planner.profile import DeviceProfile
from edgeci_mqtt.planner.strategies import STRATEGIES, context_for, make_plan
from edgeci_mqtt.sim.gantt import write_gantt
from edgeci_mqtt.sim.simulator import SimResult, simulate
from edgeci_mqtt.timeline import intervals_from_rows

BASELINES = ("modnn", "deepthings", "aofl")


def predicted(model: str, devices: dict[str, dict], orchestrator: DeviceProfile, broker: Link) -> dict[str, SimResult]:
    env = Environment(
        tuple(
            DeviceView(
                name,
                DeviceProfile.from_dict(s["profile"]),
                Link(float(s["link"]["bandwidth_mbit"]), float(s["link"]["latency_ms"])),
            )
            for name, s in sorted(devices.items())
        ),
        orchestrator,
        broker,
    )
    chain = load_chain(model)
    ctx = context_for(chain, env)
    work = TaskWork(ctx.stages, ctx.shapes)
    return {s: simulate(make_plan(s, ctx), env, work) for s in STRATEGIES}


def orchestrator_profile(run: EmulatedRun, tmp: Path) -> DeviceProfile:
    """The orchestrator's profile, measured as the devices measure theirs: in its cgroup."""
    out = tmp / "orchestrator-profile.yaml"
    command = run.cluster.in_namespace(None, sys.executable, "-m", "edgeci_mqtt", "profile", "--output", str(out))
    subprocess.run(command, check=True, capture_output=True)
    return DeviceProfile.from_dict(yaml.safe_load(out.read_text()))


def median_run(runs: list[dict]) -> dict:
    """The run whose latency is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["latency_s"])
    return ordered[(len(ordered) - 1) // 2]


def gantts(cluster: str, model: str, runs: dict[str, list[dict]], sim: dict[str, SimResult], devices: list[str]) -> str:
    """Measured (median run of each strategy) and predicted Gantt charts; their markdown."""
    measured = {s: intervals_from_rows(median_run(v)["timeline"]) for s, v in runs.items()}
    names = {kind: f"gantt-{kind}-{cluster}-{model}.png" for kind in ("measured", "predicted")}
    write_gantt(measured, devices, DOCS / "img" / names["measured"])
    write_gantt({s: sim[s].timeline for s in runs}, devices, DOCS / "img" / names["predicted"])
    return (
        f"#### {model} on {cluster}\n\nMeasured (the median run of each strategy):\n\n"
        f"![measured]({'img/' + names['measured']})\n\nPredicted by the simulator:\n\n"
        f"![predicted]({'img/' + names['predicted']})\n"
    )


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", default="homo4,hetero4,hetero8")
    parser.add_argument("--models", default="vgg16,resnet34")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    raw: dict[str, object] = {}
    lines = [
        "## Emulated clusters: every strategy measured (and simulated)",
        "",
        f"`sudo python -m bench.cluster_bench --clusters {args.clusters} --runs {args.runs}` on {machine_line()}. "
        f"Median and p90 of {args.runs} interleaved runs after {args.warmup} warm-up round(s), end-to-end latency "
        "seen by a client on the broker host. *sim*: the simulator's makespan for the same strategy on the "
        "devices' published (measured) profiles and links and the orchestrator's profile measured in its cgroup; "
        "error = (sim - measured) / measured.",
        "",
        "| cluster | model | strategy | median (ms) | p90 (ms) | speed-up vs local | ratio vs best baseline | "
        "sim (ms) | sim error |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    charts: list[str] = []
    for name in args.clusters.split(","):
        spec = load_cluster(name)
        print(f"== {name}: starting {len(spec.devices)} devices ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp, emulated_run(spec, Path(tmp), args.models) as run:
            out = Path(tmp) / "runs.json"
            driver = [
                sys.executable,
                "-m",
                "bench.cluster_driver",
                "--client",
                run.url("client"),
                "--watcher",
                run.url("watcher"),
                "--devices",
                str(len(spec.devices)),
                "--models",
                args.models,
                "--runs",
                str(args.runs),
                "--warmup",
                str(args.warmup),
                "--out",
                str(out),
            ]
            subprocess.run(run.in_hub(*driver), check=True, cwd=Path(__file__).resolve().parent.parent)
            data = json.loads(out.read_text())
            orchestrator = orchestrator_profile(run, Path(tmp))
        raw[name] = data
        for model, runs in data["runs"].items():
            results = predicted(model, data["devices"], orchestrator, spec.broker.link)
            sim = {strategy: r.makespan_s for strategy, r in results.items()}
            charts.append(gantts(name, model, runs, results, [d.name for d in spec.devices]))
            medians = {s: statistics.median(r["latency_s"] for r in v) for s, v in runs.items()}
            best = min(medians[b] for b in BASELINES if b in medians)
            for strategy, values in runs.items():
                latencies = [r["latency_s"] for r in values]
                median = medians[strategy]
                lines.append(
                    f"| {name} | {model} | {strategy} | {median * 1e3:.0f} | {p90(latencies) * 1e3:.0f} | "
                    f"{medians['local'] / median:.2f}x | {median / best:.3f} | {sim[strategy] * 1e3:.0f} | "
                    f"{100 * (sim[strategy] - median) / median:+.0f}% |"
                )
                print(lines[-1], flush=True)
    (DOCS / "bench").mkdir(exist_ok=True)
    (DOCS / "bench" / "cluster_bench.json").write_text(json.dumps(raw, indent=1))
    lines += ["", "### Gantt charts", "", *charts]
    write_section("cluster_bench", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
