"""The cluster benchmark's report logic (no cluster): medians, p90 and the targets verdicts."""

from __future__ import annotations

import pytest

from bench.cluster_bench import Row, median_run, p90, random_targets, targets
from edgeci_mqtt.planner.cluster import cluster_yaml
from edgeci_mqtt.planner.random_clusters import random_cluster

pytestmark = pytest.mark.pure


def row(
    cluster: str,
    model: str,
    strategy: str,
    median_s: float,
    vs_best: float,
    speedup: float,
    sim_s: float,
    broker_mb: float | None = None,
) -> Row:
    return Row(cluster, model, strategy, median_s, median_s, speedup, vs_best, sim_s, sim_s, None, broker_mb)


def test_median_run_and_p90() -> None:
    runs = [{"latency_s": v} for v in (0.5, 0.1, 0.3, 0.2)]
    assert median_run(runs)["latency_s"] == 0.2  # the lower middle of an even count
    assert p90([float(v) for v in range(1, 11)]) == 9.0


def test_each_target_is_judged_on_its_own_figure() -> None:
    rows = [
        row("hetero4", "vgg16", "edgeci", 0.6, 0.60, 1.3, 0.62),  # 40 % below: met
        row("hetero8", "vgg16", "edgeci", 0.8, 0.652, 1.3, 0.80),  # 34.8 % below: not met
        row("homo4", "vgg16", "edgeci", 0.3, 1.0, 3.5, 0.40),  # 3.5x >= 3.40x; sim +33 %
        row("homo4", "vgg16", "flow", 0.3, 0.5, 3.1, 0.31, broker_mb=6.5),  # 3.1x met; 6.5 MB not
        row("hetero4", "vgg16", "flow", 0.3, 0.45, 1.9, 0.29),  # 1.9x not met; 0.45 of the best: met
    ]
    lines = targets(rows)
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
    verdict = {(" ".join(target.split()[:3]), where): met for target, where, _, met in cells}
    assert (
        verdict["edgeci median >=", "hetero4 vgg16"] == "yes" and verdict["edgeci median >=", "hetero8 vgg16"] == "no"
    )
    assert verdict["edgeci over local", "homo4 vgg16"] == "yes"
    assert verdict["edgeci over local", "hetero4 vgg16"] == "no"
    assert verdict["flow over local", "homo4 vgg16"] == "yes" and verdict["flow over local", "hetero4 vgg16"] == "no"
    assert verdict["flow <= 0.5", "hetero4 vgg16"] == "yes"
    assert verdict["flow moves <=", "homo4 vgg16"] == "no"
    assert verdict["simulator within ±10", "2 flow rows"] == "yes"
    assert verdict["simulator within ±10", "all 5 rows"] == "no" and "4 within" in lines[-1]
    assert any("34.8 % below" in line for line in lines)  # a miss by a hair shows as one


def test_random_cluster_targets_weigh_flow_against_the_bound_and_every_other_strategy() -> None:
    spec = random_cluster(3, 4)
    cpus = [d.cpu for d in spec.devices]
    bound = sum(cpus) / max(cpus)
    name = spec.name
    rows = [
        row(name, "vgg16", "local", 1.0, 1.0, 1.0, 1.0),
        row(name, "vgg16", "edgeci", 0.50, 1.0, 2.0, 0.5),
        row(name, "vgg16", "flow", 0.51, 1.0, 0.6 * bound + 0.01, 0.7),  # 2 % slower than edgeci: met
        row(name, "resnet34", "local", 1.0, 1.0, 1.0, 1.0),
        row(name, "resnet34", "flow", 1.05, 1.0, 0.95, 1.0),  # 5 % slower than local: not met
    ]
    lines = random_targets(rows, {name: {"cluster_yaml": cluster_yaml(spec), "runs": {"vgg16": {}, "resnet34": {}}}})
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
    verdict = {(" ".join(target.split()[:3]), where): met for target, where, _, met in cells}
    assert verdict["flow over local", f"{name} vgg16"] == "yes"
    assert verdict["flow at most", f"{name} vgg16"] == "yes" and verdict["flow at most", f"{name} resnet34"] == "no"
    assert verdict["simulator within ±10", "all 5 rows"] == "no" and "4 within (80 %)" in lines[-1]  # 90 % asked
