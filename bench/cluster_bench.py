"""Every strategy on emulated clusters, measured, with the simulator's prediction beside it.

For each cluster (default homo4, hetero4, hetero8): bring it up (namespaces, shaped links,
delaying relays, CPU quotas; see docs/EMULATION.md), start the broker, one agent per
device and the orchestrator in their namespaces and cgroups, then a driver in the broker
host's namespace runs warm-up inferences and ``--runs`` rounds of every strategy for
VGG-16 and ResNet-34, interleaved. The simulator replays each strategy's plan on the
devices' own published profiles and links, and once more with free links to show what
communication costs. Writes docs/BENCHMARKS.md (table, targets, measured and predicted
Gantt charts) and raw JSON in docs/bench/; ``--report-only`` redraws them from that JSON.
Needs root.

    sudo python -m bench.cluster_bench [--clusters homo4,hetero4,hetero8] [--runs 5]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.report import DOCS, machine_line, write_section
from bench.simulate_clusters import random_clusters
from edgeci_mqtt.bus.address import BrokerAddress
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.emulation.processes import EmulatedRun, emulated_run
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models import load_chain, model_size, skeleton_chain
from edgeci_mqtt.planner.cluster import ClusterSpec, cluster_yaml, load_cluster, parse_cluster
from edgeci_mqtt.planner.costs import TaskWork
from edgeci_mqtt.planner.environment import DeviceView, Environment
from edgeci_mqtt.planner.strategies import PlanningContext, context_for
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy
from edgeci_mqtt.profiling import map_densities
from edgeci_mqtt.sim.choice import served_plan
from edgeci_mqtt.sim.gantt import write_gantt
from edgeci_mqtt.sim.simulator import SimResult, simulate
from edgeci_mqtt.timeline import intervals_from_rows

BASELINES = ("modnn", "deepthings", "aofl")
ABLATION = (
    "flow:barrier+raw+orchestrator-tail",
    "flow:raw+orchestrator-tail+sequential+unbanded",
    "flow:raw+orchestrator-tail+unbanded",
    "flow:raw+orchestrator-tail",
    "flow:orchestrator-tail",
)
"""``flow`` built up: rows kept on the devices only; + no barrier; + halo and compute overlapped;
+ the image in bands; + compression; (+ tail placement and the choice among plans = ``flow``)."""
RAW = DOCS / "bench" / "cluster_bench.json.gz"
"""Every measured run, compact and gzipped (the timelines make it megabytes as plain JSON)."""
IDEAL_LINK = Link(1e6, 0.0)


def environment(data: dict, broker: Link, model: str, ideal: bool = False) -> Environment:
    """The environment the devices and orchestrator published after ``model``'s runs (a
    device corrects its profile by its work); ``ideal``: every link free."""
    devices = data.get("devices_by_model", {}).get(model, data["devices"])
    views = tuple(
        DeviceView(
            name,
            DeviceProfile.from_dict(s["profile"]),
            IDEAL_LINK if ideal else Link.from_dict(s["link"]),
        )
        for name, s in sorted(devices.items())
    )
    return Environment(views, DeviceProfile.from_dict(data["orchestrator_profile"]), IDEAL_LINK if ideal else broker)


def predicted(
    ctx: PlanningContext, work: TaskWork, ideal: Environment, strategies: list[str]
) -> tuple[dict[str, SimResult], dict[str, float]]:
    """Each strategy's plan, as it serves one request on idle devices, replayed on the cluster,
    and (same plan) on ``ideal``, every link free."""
    plans = {s: served_plan(Strategy.parse(s), ctx) for s in strategies}
    return (
        {s: simulate(p, ctx.env, work) for s, p in plans.items()},
        {s: simulate(p, ideal, work).makespan_s for s, p in plans.items()},
    )


def orchestrator_profile(run: EmulatedRun, tmp: Path) -> dict:
    """The orchestrator's profile, measured as the devices measure theirs: in its cgroup."""
    out = tmp / "orchestrator-profile.yaml"
    command = run.cluster.in_namespace(None, sys.executable, "-m", "edgeci_mqtt", "profile", "--output", str(out))
    subprocess.run(command, check=True, capture_output=True)
    return dict(yaml.safe_load(out.read_text()))


def measure(spec: ClusterSpec, args: argparse.Namespace, strategies: list[str]) -> dict:
    """Bring cluster ``spec`` up, run the driver in the broker host's namespace, tear down."""
    name = spec.name
    print(f"== {name}: starting {len(spec.devices)} devices ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp, emulated_run(spec, Path(tmp), args.models) as run:
        out = Path(tmp) / "runs.json"

        def login(user: str) -> str:
            address = BrokerAddress.parse(run.url(user))
            return f"mqtt://{user}@{address.host}:{address.port}"

        driver = [
            *(sys.executable, "-m", "bench.cluster_driver"),
            *("--client", login("client"), "--stream-client", login("stream"), "--watcher", login("watcher")),
            *("--credentials", str(run.broker.workdir)),  # the passwords stay in its files, out of argv
            *("--link", run.cluster.bridge),
            *("--devices", str(len(spec.devices)), "--models", args.models),
            *("--runs", str(args.runs), "--warmup", str(args.warmup), "--out", str(out)),
            *("--stream", str(args.stream if name in args.stream_clusters.split(",") else 0)),
            *("--strategies", ",".join(strategies)),
        ]
        subprocess.run(run.in_hub(*driver), check=True, cwd=Path(__file__).resolve().parent.parent)
        data = dict(json.loads(out.read_text()))
        data["orchestrator_profile"] = orchestrator_profile(run, Path(tmp))
    data["rounds"], data["warmup"] = args.runs, args.warmup
    data["cluster_yaml"] = cluster_yaml(spec)  # a random cluster has no name to load it by
    return data


def compute_ratio(work: TaskWork, env: Environment, runs: list[dict]) -> float | None:
    """Median over a strategy's tasks of measured compute time / the device profile's price."""
    ratios = []
    for run in runs:
        for interval in intervals_from_rows(run["timeline"]):
            if interval.kind != "compute" or interval.block is None or interval.region is None:
                continue
            predicted = env.device(interval.resource).profile.work_seconds(work(interval.block, interval.region))
            ratios.append((interval.end - interval.start) / predicted)
    return statistics.median(ratios) if ratios else None


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


@dataclass(frozen=True)
class Row:
    cluster: str
    model: str
    strategy: str
    median_s: float
    p90_s: float
    speedup: float
    vs_best_baseline: float
    sim_s: float
    sim_ideal_s: float
    compute_ratio: float | None
    broker_mb: float | None = None

    @property
    def sim_error(self) -> float:
        return (self.sim_s - self.median_s) / self.median_s

    def markdown(self) -> str:
        return (
            f"| {self.cluster} | {self.model} | {self.strategy} | {self.median_s * 1e3:.0f} | {self.p90_s * 1e3:.0f} | "
            f"{self.speedup:.2f}x | {self.vs_best_baseline:.3f} | {self.sim_s * 1e3:.0f} | "
            f"{100 * self.sim_error:+.0f}% | {self.sim_ideal_s * 1e3:.0f} | "
            f"{'-' if self.compute_ratio is None else f'{self.compute_ratio:.2f}'} | "
            f"{'-' if self.broker_mb is None else f'{self.broker_mb:.1f}'} |"
        )


def broker_mb(runs: list[dict]) -> float | None:
    """Median MB through the broker host's link per inference (in + out), if measured."""
    moved = [r["broker_in_bytes"] + r["broker_out_bytes"] for r in runs if "broker_in_bytes" in r]
    return statistics.median(moved) / 1e6 if moved else None


@functools.cache
def densities(model: str) -> tuple[float, ...]:
    """Shares of non-zeros at each boundary on the benchmark's image, with the devices' weights
    (seeded random, seed 0): what the simulator prices compression with."""
    return map_densities(load_chain(model, seed=0), load_input(SAMPLE_IMAGE, model_size(model)))


def spec_of(name: str, data: dict) -> ClusterSpec:
    return parse_cluster(yaml.safe_load(data["cluster_yaml"])) if "cluster_yaml" in data else load_cluster(name)


def rows_of(name: str, data: dict) -> tuple[list[Row], list[str]]:
    """Table rows and Gantt chart markdown of one measured cluster."""
    spec = spec_of(name, data)
    rows, charts = [], []
    for model, runs in data["runs"].items():
        env, free = environment(data, spec.broker.link, model), environment(data, spec.broker.link, model, True)
        side = model_size(model)
        chain = skeleton_chain(model).spec(side, side, densities(model))  # geometry and costs: no weights needed
        ctx = context_for(chain, env)
        work = TaskWork(ctx.chain.stages, ctx.chain.shapes)
        results, ideal = predicted(ctx, work, free, list(runs))
        charts.append(gantts(name, model, runs, results, [d.name for d in spec.devices]))
        medians = {s: statistics.median(r["latency_s"] for r in v) for s, v in runs.items()}
        best = min(medians[b] for b in BASELINES if b in medians)
        for strategy, values in runs.items():
            median = medians[strategy]
            rows.append(
                Row(
                    *(name, model, strategy, median, p90([r["latency_s"] for r in values])),
                    *(medians["local"] / median, median / best, results[strategy].makespan_s, ideal[strategy]),
                    compute_ratio(work, env, values),
                    broker_mb(values),
                )
            )
    return rows, charts


FLOW_SPEEDUPS = {
    ("homo4", "vgg16"): 3.0,
    ("hetero4", "vgg16"): 2.0,
    ("hetero8", "vgg16"): 2.4,
    ("homo4", "resnet34"): 2.0,
    ("hetero4", "resnet34"): 1.5,
}
"""Issue 11: ``flow`` over ``local``, by cluster and model."""
FLOW_MAX_MB = 6.0
"""Issue 11: MB through the broker per VGG-16 inference on homo4 under ``flow``."""


def targets(rows: list[Row]) -> list[str]:
    """Issue 11's targets for ``flow``, each met or not with its figure, then issue 9's for ``edgeci``."""
    find = {(r.cluster, r.model, r.strategy): r for r in rows}
    lines = ["| target | where | measured | met |", "|---|---|---|---|"]

    def verdict(ok: bool) -> str:
        return "yes" if ok else "no"

    for (cluster, model), goal in FLOW_SPEEDUPS.items():
        if row := find.get((cluster, model, "flow")):
            lines.append(
                f"| flow over local >= {goal:.1f}x | {cluster} {model} | {row.speedup:.2f}x | "
                f"{verdict(row.speedup >= goal)} |"
            )
    for cluster in ("hetero4", "hetero8"):
        for model in ("vgg16", "resnet34"):
            if row := find.get((cluster, model, "flow")):
                lines.append(
                    f"| flow <= 0.5 x the best baseline | {cluster} {model} | {row.vs_best_baseline:.2f} x | "
                    f"{verdict(row.vs_best_baseline <= 0.5)} |"
                )
    if (row := find.get(("homo4", "vgg16", "flow"))) and row.broker_mb is not None:
        lines.append(
            f"| flow moves <= {FLOW_MAX_MB:.0f} MB through the broker (in + out) | homo4 vgg16 | "
            f"{row.broker_mb:.1f} MB | {verdict(row.broker_mb <= FLOW_MAX_MB)} |"
        )
    flows = [r for r in rows if r.strategy == "flow"]
    if flows:
        within = [r for r in flows if abs(r.sim_error) <= 0.10]
        worst = max(flows, key=lambda r: abs(r.sim_error))
        lines.append(
            f"| simulator within ±10 % of measured | {len(flows)} flow rows | {len(within)} within; worst "
            f"{100 * worst.sim_error:+.0f} % ({worst.cluster} {worst.model}) | {verdict(len(within) == len(flows))} |"
        )
    for cluster in ("hetero4", "hetero8"):
        for model in ("vgg16", "resnet34"):
            if row := find.get((cluster, model, "edgeci")):
                lines.append(
                    f"| edgeci median >= 35 % below the best baseline (issue 9) | {cluster} {model} | "
                    f"{100 * (1 - row.vs_best_baseline):.1f} % below | {verdict(row.vs_best_baseline <= 0.65)} |"
                )
    for cluster in ("homo4", "hetero4"):
        if row := find.get((cluster, "vgg16", "edgeci")):
            cpus = [d.cpu for d in load_cluster(cluster).devices]
            goal = 0.85 * sum(cpus) / max(cpus)
            lines.append(
                f"| edgeci over local >= 0.85 x sum(cpu)/max(cpu) = {goal:.2f}x (issue 9) | {cluster} vgg16 | "
                f"{row.speedup:.2f}x | {verdict(row.speedup >= goal)} |"
            )
    within = [r for r in rows if abs(r.sim_error) <= 0.10]
    worst = max(rows, key=lambda r: abs(r.sim_error))
    lines.append(
        f"| simulator within ±10 % of measured (issue 9) | all {len(rows)} rows | {len(within)} within; worst "
        f"{100 * worst.sim_error:+.0f} % ({worst.cluster} {worst.model} {worst.strategy}) | "
        f"{verdict(len(within) == len(rows))} |"
    )
    return lines


def stream_lines(raw: dict[str, dict]) -> list[str]:
    """Streams: throughput and latency per strategy, and issue 11's stream target."""
    lines = [
        "| cluster | model | strategy | requests | throughput (req/s) | p50 (ms) | p90 (ms) | served whole | failed |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for cluster, data in raw.items():
        for model, by_strategy in data.get("streams", {}).items():
            figures = {}
            for strategy, run in by_strategy.items():
                done = run["latencies_s"]
                rate = len(done) / run["wall_s"]
                p50 = statistics.median(done) if done else float("nan")
                figures[strategy] = (rate, p50)
                lines.append(
                    f"| {cluster} | {model} | {strategy} | {len(done)} | {rate:.2f} | {p50 * 1e3:.0f} | "
                    f"{p90(done) * 1e3 if done else float('nan'):.0f} | {run['whole']:.0f} | {len(run['failures'])} |"
                )
            if "flow" in figures and "replicas" in figures:
                (flow_rate, flow_p50), (rep_rate, rep_p50) = figures["flow"], figures["replicas"]
                target = f"| flow throughput >= 0.95 x replicas' and a lower p50 | {cluster} {model} |"
                if not (flow_rate and rep_rate):
                    verdicts.append(f"{target} a stream had no answer | no |")
                    continue
                ok = flow_rate >= 0.95 * rep_rate and flow_p50 < rep_p50
                verdicts.append(
                    f"{target} {flow_rate / rep_rate:.2f} x, p50 {flow_p50 * 1e3:.0f} vs {rep_p50 * 1e3:.0f} ms | "
                    f"{'yes' if ok else 'no'} |"
                )
    if len(lines) == 2:
        return []
    return ["### Streams", "", *lines, "", "| target | where | measured | met |", "|---|---|---|---|", *verdicts, ""]


def random_targets(rows: list[Row], raw: dict[str, dict]) -> list[str]:
    """Issue 23's targets on seeded random clusters: ``flow`` over ``local`` against the compute
    bound (VGG-16), ``flow`` against every other strategy (both models), the simulator's error,
    each with the distribution over the clusters."""
    lines = ["| target | where | measured | met |", "|---|---|---|---|"]
    find = {(r.cluster, r.model, r.strategy): r for r in rows}
    ratios: dict[str, list[float]] = {}
    for name, data in raw.items():
        cpus = [d.cpu for d in spec_of(name, data).devices]
        bound = sum(cpus) / max(cpus)
        for model in data["runs"]:
            flow = find.get((name, model, "flow"))
            if flow is None:
                continue
            if model == "vgg16":
                goal = 0.6 * bound
                lines.append(
                    f"| flow over local >= 0.6 x Σcpu/max cpu = {goal:.2f}x | {name} {model} | {flow.speedup:.2f}x "
                    f"({flow.speedup / bound:.2f} of the bound) | {'yes' if flow.speedup >= goal else 'no'} |"
                )
            others = [r for r in rows if r.cluster == name and r.model == model and r.strategy != "flow"]
            best = min(others, key=lambda r: r.median_s)
            ratio = flow.median_s / best.median_s
            ratios.setdefault(model, []).append(ratio)
            lines.append(
                f"| flow at most 3 % slower than any other strategy | {name} {model} | {ratio:.3f} x {best.strategy} | "
                f"{'yes' if ratio <= 1.03 else 'no'} |"
            )
    for model, values in ratios.items():
        lines.append(
            f"| (distribution) flow / best other strategy | {len(values)} clusters, {model} | median "
            f"{statistics.median(values):.3f}, worst {max(values):.3f} | - |"
        )
    if rows:
        within = [r for r in rows if abs(r.sim_error) <= 0.10]
        errors = sorted(r.sim_error for r in rows)
        lines.append(
            f"| simulator within ±10 % of measured on >= 90 % of rows | all {len(rows)} rows | {len(within)} within "
            f"({100 * len(within) / len(rows):.0f} %); median {100 * statistics.median(errors):+.0f} %, from "
            f"{100 * errors[0]:+.0f} % to {100 * errors[-1]:+.0f} % | "
            f"{'yes' if len(within) >= 0.9 * len(rows) else 'no'} |"
        )
    return lines


ZOO_SPEEDUPS = {("homo4", "yolov2"): 3.0, ("hetero4", "yolov2"): 2.0}
"""Issue 24: ``flow`` over ``local`` on YOLOv2 at 608."""


def zoo_targets(rows: list[Row]) -> list[str]:
    """Issue 24's targets: ``flow`` never more than 3 % slower than ``local`` (the planner keeps
    a model whole where splitting does not pay), and YOLOv2's speed-ups."""
    find = {(r.cluster, r.model, r.strategy): r for r in rows}
    lines = ["| target | where | measured | met |", "|---|---|---|---|"]
    for (cluster, model, strategy), row in find.items():
        if strategy != "flow" or (local := find.get((cluster, model, "local"))) is None:
            continue
        slower = row.median_s / local.median_s
        lines.append(
            f"| flow at most 3 % slower than local | {cluster} {model} | {slower:.3f} x local | "
            f"{'yes' if slower <= 1.03 else 'no'} |"
        )
        if (goal := ZOO_SPEEDUPS.get((cluster, model))) is not None:
            lines.append(
                f"| flow over local >= {goal:.1f}x | {cluster} {model} | {row.speedup:.2f}x | "
                f"{'yes' if row.speedup >= goal else 'no'} |"
            )
    return lines


def report(raw: dict[str, dict], command: str, random: bool = False, section: str = "") -> list[str]:
    rows, charts = [], []
    for name, data in raw.items():
        cluster_rows, cluster_charts = rows_of(name, data)
        rows += cluster_rows
        charts += cluster_charts
    first = next(iter(raw.values()))
    title = (
        "seeded random clusters (`edgeci cluster random`)"
        if random
        else f"{section} models, every strategy"
        if section
        else "every strategy measured (and simulated)"
    )
    return [
        f"## Emulated clusters: {title}",
        "",
        f"`{command}` on {machine_line()}. Median and p90 of {first['rounds']} interleaved runs after "
        f"{first['warmup']} warm-up round(s), end-to-end latency seen by a client on the broker host. *sim*: the "
        "simulator's makespan for the same strategy on the devices' published (measured) profiles and links and "
        "the orchestrator's profile measured in its cgroup; error = (sim - measured) / measured. *sim, free "
        "network*: the same plan replayed with every link infinitely fast and without latency, i.e. what is left "
        "when communication costs nothing (compute, the orchestrator's own work and the tail). *task compute / "
        "profile*: median over the strategy's tasks of a task's measured compute time over its device profile's "
        "price for it. *broker MB*: median bytes that crossed the broker host's link per inference, in + out, read "
        "from the link's own counters (headers included; local traffic of the client and orchestrator on the broker "
        "host is not on that link).",
        "",
        "| cluster | model | strategy | median (ms) | p90 (ms) | speed-up vs local | ratio vs best baseline | "
        "sim (ms) | sim error | sim, free network (ms) | task compute / profile | broker MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(r.markdown() for r in rows),
        "",
        "### Targets",
        "",
        *(random_targets(rows, raw) if random else zoo_targets(rows) if section else targets(rows)),
        "",
        *stream_lines(raw),
        "### Gantt charts",
        "",
        *charts,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", default="homo4,hetero4,hetero8")
    parser.add_argument("--models", default="vgg16,resnet34")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--stream", type=int, default=20, help="requests per stream, 4 in flight (0: none)")
    parser.add_argument("--stream-clusters", default="homo4,hetero4")
    parser.add_argument(
        "--random",
        default="",
        help="seeds of random clusters to run instead of --clusters (as bench.simulate_clusters draws them: "
        "3 + seed %% 6 devices, a shared medium every fifth); every strategy, no ablation, in a section of their own",
    )
    parser.add_argument(
        "--section",
        default="",
        help="measure --clusters into a raw file and docs section of this name (every strategy, no ablation), "
        "e.g. zoo for the zoo's models",
    )
    parser.add_argument(
        "--report-only", action="store_true", help=f"no measuring: redraw the docs from {RAW.relative_to(DOCS.parent)}"
    )
    args = parser.parse_args()
    random, section = bool(args.random), "random" if args.random else args.section
    where = f"--random {args.random}" if random else f"--clusters {args.clusters}"
    where += f" --section {section}" if section and not random else ""
    command = (
        f"sudo python -m bench.cluster_bench {where} --models {args.models} --runs {args.runs} "
        f"--warmup {args.warmup} --stream {args.stream} --stream-clusters {args.stream_clusters}"
    )
    raw_path = DOCS / "bench" / f"cluster_bench_{section}.json.gz" if section else RAW
    if args.report_only:
        stored = json.loads(gzip.decompress(raw_path.read_bytes()))
        raw, command = stored["clusters"], stored["command"]
    else:
        if random:
            specs = [random_clusters(int(seed) + 1)[int(seed)] for seed in args.random.split(",")]
            strategies: list[str] = list(STRATEGY_NAMES)
        else:
            specs = [load_cluster(name) for name in args.clusters.split(",")]
            strategies = list(STRATEGY_NAMES) if section else [*map(str, STRATEGY_NAMES), *ABLATION]
        raw = {}
        raw_path.parent.mkdir(exist_ok=True)
        for spec in specs:  # written after each cluster: a long run's finished clusters are kept
            raw[spec.name] = measure(spec, args, strategies)
            raw_path.write_bytes(
                gzip.compress(json.dumps({"command": command, "clusters": raw}, separators=(",", ":")).encode())
            )
    lines = report(raw, command, random, section)
    write_section(f"cluster_bench_{section}" if section else "cluster_bench", "\n".join(lines))
    print("\n".join(lines[: lines.index("### Gantt charts")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
