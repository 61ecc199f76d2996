"""How long bringing a model takes: from its ONNX file to a plan, for every zoo model.

Each zoo model (seeded weights) is exported to ONNX once with torch's exporter (not timed),
then timed: reading the file into a graph, cutting it into a chain, and planning it with
`flow` on hetero4 (issue 24's target: under 2 s in all); and planning it cold with `flow`
and `edgeci` on swarm64 (target: within 100 ms). Medians of --repeats runs; writes its
table into docs/BENCHMARKS.md.

    python -m bench.graph_import [--repeats 3] [--profile host.yaml]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

from bench.report import host_profile, machine_line, median_seconds, write_section
from edgeci_mqtt.models import build_model, model_size
from edgeci_mqtt.models.imported import import_file
from edgeci_mqtt.models.zoo import ZOO
from edgeci_mqtt.planner.cluster import load_cluster
from edgeci_mqtt.planner.environment import environment_from_cluster
from edgeci_mqtt.planner.strategies import context_for, make_plan
from edgeci_mqtt.planner.strategy import Strategy
from edgeci_mqtt.sim.choice import plan_for

IMPORT_TARGET_S = 2.0
PLAN_TARGET_MS = 100.0


def export(name: str, directory: Path) -> Path:
    path, side = directory / f"{name}.onnx", model_size(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(build_model(name), (torch.zeros(1, 3, side, side),), str(path), dynamo=False)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    host = host_profile(args.profile)
    hetero4 = environment_from_cluster(load_cluster("hetero4"), host)
    swarm64 = environment_from_cluster(load_cluster("swarm64"), host)
    rows, verdicts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ZOO:
            print(f"{name} ...", flush=True)
            path, side = export(name, Path(tmp)), model_size(name)

            def bring(path: Path = path, side: int = side) -> None:
                chain = import_file(path)
                plan_for(Strategy.parse("flow"), context_for(chain.spec(side, side), hetero4))

            chain = import_file(path)
            spec = chain.spec(side, side)
            bring_s = median_seconds(bring, args.repeats)
            read_s = median_seconds(lambda path=path: import_file(path), args.repeats)
            cold = {
                s: 1e3
                * median_seconds(
                    lambda s=s, spec=spec: make_plan(Strategy.parse(s), context_for(spec, swarm64)), args.repeats
                )
                for s in ("flow", "edgeci")
            }
            rows.append(
                f"| {name} | {side} | {len(chain)} | {path.stat().st_size / 1e6:.1f} | {read_s:.2f} | {bring_s:.2f} "
                f"| {cold['flow']:.0f} | {cold['edgeci']:.0f} |"
            )
            verdicts.append(
                f"- {name}: file to plan {bring_s:.2f} s ({'met' if bring_s < IMPORT_TARGET_S else 'missed'}); "
                f"swarm64 cold `flow` {cold['flow']:.0f} ms, `edgeci` {cold['edgeci']:.0f} ms "
                f"({'met' if max(cold.values()) <= PLAN_TARGET_MS else 'missed'})."
            )
    lines = [
        "## Bringing a model: ONNX file to plan",
        "",
        f"`python -m bench.graph_import --repeats {args.repeats}` on {machine_line()}. Each zoo model exported "
        "to ONNX with torch's exporter (not timed), then: *read*, the file to a chain "
        "(`models.imported.import_file`: parse, fold, convert, cut, weights); *to a plan*, that and `flow`'s "
        "plan on hetero4 (target: under "
        f"{IMPORT_TARGET_S:.0f} s); *swarm64 cold*, a plan from scratch on the 64-device cluster (target: within "
        f"{PLAN_TARGET_MS:.0f} ms). Seconds and milliseconds, medians of {args.repeats} runs.",
        "",
        "| model | side | stages | file MB | read (s) | to a plan on hetero4 (s) | swarm64 cold flow (ms) "
        "| swarm64 cold edgeci (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *verdicts,
    ]
    write_section("graph_import", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
