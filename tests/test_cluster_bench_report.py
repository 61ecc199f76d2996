"""The cluster benchmark's report logic (no cluster): medians, p90 and the targets verdicts."""

from __future__ import annotations

from bench.cluster_bench import Row, median_run, p90, targets


def row(cluster: str, model: str, strategy: str, median_s: float, vs_best: float, speedup: float, sim_s: float) -> Row:
    return Row(cluster, model, strategy, median_s, median_s, speedup, vs_best, sim_s, sim_s, None)


def test_median_run_and_p90() -> None:
    runs = [{"latency_s": v} for v in (0.5, 0.1, 0.3, 0.2)]
    assert median_run(runs)["latency_s"] == 0.2  # the lower middle of an even count
    assert p90([float(v) for v in range(1, 11)]) == 9.0


def test_each_target_is_judged_on_its_own_figure() -> None:
    rows = [
        row("hetero4", "vgg16", "edgeci", 0.6, 0.60, 1.3, 0.62),  # 40 % below: met
        row("hetero8", "vgg16", "edgeci", 0.8, 0.652, 1.3, 0.80),  # 34.8 % below: not met
        row("homo4", "vgg16", "edgeci", 0.3, 1.0, 3.5, 0.40),  # 3.5x >= 3.40x; sim +33 %
    ]
    lines = targets(rows)
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
    verdict = {(target.split()[0], where): met for target, where, _, met in cells}
    assert verdict["edgeci", "hetero4 vgg16"] == "yes" and verdict["edgeci", "hetero8 vgg16"] == "no"
    assert verdict["speed-up", "homo4 vgg16"] == "yes" and verdict["speed-up", "hetero4 vgg16"] == "no"
    assert verdict["simulator", "all 3 rows"] == "no" and "2 within" in lines[-1]
    assert "34.8 % below" in lines[3]  # a miss by a hair shows as one
