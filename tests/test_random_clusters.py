"""Seeded random clusters, and shared media in cluster files and in the planner's prices."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from edgeci_mqtt.core.link import Medium
from edgeci_mqtt.errors import ClusterError
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.planner.cluster import REFERENCE_CLUSTERS, cluster_yaml, load_cluster, parse_cluster
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.planner.random_clusters import RANGES, random_cluster
from edgeci_mqtt.planner.strategies import context_for, make_plan
from edgeci_mqtt.planner.strategy import Strategy
from tests.planning import device, environment

pytestmark = pytest.mark.pure

SEEDS = range(200)


def test_one_seed_always_gives_the_same_cluster_and_seeds_differ() -> None:
    assert random_cluster(7, 6) == random_cluster(7, 6)
    assert random_cluster(7, 6, shared_medium=True) == random_cluster(7, 6, shared_medium=True)
    assert len({random_cluster(seed, 6) for seed in range(20)}) == 20
    # a pinned draw: a change to the generator shows here (benchmarks name clusters by seed)
    first = random_cluster(0, 6).devices[0]
    assert (first.cpu, first.link.bandwidth_mbit, first.link.latency_ms) == (0.28, 100.0, 1.2)


def test_draws_cover_their_ranges_and_keep_the_cpu_budget() -> None:
    clusters = [random_cluster(seed, 6) for seed in SEEDS]
    devices = [d for c in clusters for d in c.devices]
    for values, (low, high) in (
        ([d.cpu for d in devices], RANGES.cpu),
        ([d.link.bandwidth_mbit for d in devices], RANGES.bandwidth_mbit),
        ([d.link.latency_ms for d in devices], RANGES.latency_ms),
    ):
        assert low <= min(values) and max(values) <= high
        assert min(values) < low * 1.5 and max(values) > high / 1.5  # the whole range, not a corner of it
    assert all(sum(d.cpu for d in c.devices) <= 1.0 + 1e-9 and c.emulate for c in clusters)
    unbudgeted = [random_cluster(seed, 8, cpu_budget=None) for seed in range(50)]
    assert max(sum(d.cpu for d in c.devices) for c in unbudgeted) > 1.0
    assert not any(c.emulate for c in unbudgeted)


def test_the_fastest_cpu_is_not_always_on_the_best_link() -> None:
    def fastest_on_best(seed: int) -> bool:
        devices = random_cluster(seed, 6).devices
        fastest = max(devices, key=lambda d: d.cpu)
        return fastest.link.bandwidth_mbit == max(d.link.bandwidth_mbit for d in devices)

    share = sum(map(fastest_on_best, SEEDS)) / len(SEEDS)
    assert 0.05 < share < 0.5  # independent draws: about one in six


def test_a_shared_medium_holds_two_to_four_devices() -> None:
    for seed in range(50):
        cluster = random_cluster(seed, 6, shared_medium=True)
        (medium,) = cluster.media
        behind = [d for d in cluster.devices if d.link.medium == medium]
        assert 2 <= len(behind) <= 4
        assert RANGES.medium_mbit[0] <= medium.bandwidth_mbit <= RANGES.medium_mbit[1]
    assert random_cluster(1, 2, shared_medium=True).media


def test_impossible_requests_are_refused() -> None:
    with pytest.raises(ClusterError, match="at least 2 devices"):
        random_cluster(0, 1, shared_medium=True)
    with pytest.raises(ClusterError, match="do not fit a budget"):
        random_cluster(0, 10, cpu_budget=0.1)
    with pytest.raises(ClusterError, match="at least 1 devices"):
        random_cluster(0, 0)


@pytest.mark.parametrize("name", REFERENCE_CLUSTERS)
def test_cluster_files_round_trip_through_yaml(name: str) -> None:
    for spec in (load_cluster(name), random_cluster(3, 5, shared_medium=True), random_cluster(4, 8, cpu_budget=None)):
        assert parse_cluster(yaml.safe_load(cluster_yaml(spec, "a comment"))) == spec


def test_a_medium_must_be_declared_once_and_used_by_name() -> None:
    base = {"name": "c", "broker": {"cpu": 0.25, "bandwidth_mbit": 1000, "latency_ms": 0.2}}
    device = {"name": "a", "cpu": 0.1, "bandwidth_mbit": 10, "latency_ms": 1, "medium": "wifi"}
    with pytest.raises(ClusterError, match="'wifi' is not one of the cluster's media"):
        parse_cluster({**base, "devices": [device]})
    twice = [{"name": "wifi", "bandwidth_mbit": 5}] * 2
    with pytest.raises(ClusterError, match="appears twice"):
        parse_cluster({**base, "media": twice, "devices": [device]})
    with pytest.raises(ClusterError, match=r"media\[0\]: missing field bandwidth_mbit"):
        parse_cluster({**base, "media": [{"name": "wifi"}], "devices": [device]})
    spec = parse_cluster({**base, "media": [{"name": "wifi", "bandwidth_mbit": 5}], "devices": [device]})
    assert spec.devices[0].link.medium is not None and spec.devices[0].link.medium.bandwidth_mbit == 5


def test_the_command_writes_a_file_the_tools_read(tmp_path: Path) -> None:
    out = tmp_path / "r.yaml"
    command = [sys.executable, "-m", "edgeci_mqtt", "cluster", "random", "--seed", "5", "--devices", "4"]
    done = subprocess.run([*command, "--shared-medium", "--out", str(out)], capture_output=True, text=True, check=True)
    assert "wrote random-5-4-shared (4 devices)" in done.stdout
    assert load_cluster(out) == random_cluster(5, 4, shared_medium=True)
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert printed.startswith("# edgeci cluster random --seed 5 --devices 4")
    assert parse_cluster(yaml.safe_load(printed)) == random_cluster(5, 4)


def behind(view: DeviceView, medium: Medium) -> DeviceView:
    return replace(view, link=replace(view.link, medium=medium))


def test_the_planner_prices_devices_behind_a_medium_at_their_share_of_it() -> None:
    wifi = Medium("wifi", 30.0)
    env = environment(behind(device("a", mbit=100), wifi), behind(device("b", mbit=5), wifi), device("c", mbit=100))
    a, b, c = env.devices
    assert (a.sharing, b.sharing, c.sharing) == (2, 2, 1)
    assert a.bytes_per_s == pytest.approx(15e6 / 8)  # half the medium, less than its own link
    assert b.bytes_per_s == pytest.approx(5e6 / 8)  # its own link is the narrower
    assert c.bytes_per_s == c.link.bytes_per_s
    alone = env.without("b").device("a")
    assert alone.sharing == 1 and alone.bytes_per_s == pytest.approx(30e6 / 8)


@pytest.mark.parametrize("strategy", ["flow", "edgeci"])
def test_a_plan_on_a_shared_medium_costs_more_and_gives_its_devices_less(
    strategy: str, chains: dict[str, StageChain]
) -> None:
    chain = chains["vgg16"].spec(224, 224)
    twins = [device(name, gflops=20.0, mbit=50.0, latency_ms=1.0) for name in ("a", "b", "c", "d")]
    wifi = Medium("wifi", 20.0)
    free = make_plan(Strategy(strategy), context_for(chain, environment(*twins, broker_mbit=1000.0)))
    shared_env = environment(*(behind(v, wifi) if v.name in "ab" else v for v in twins), broker_mbit=1000.0)
    shared = make_plan(Strategy(strategy), context_for(chain, shared_env))
    assert shared.predicted_s > free.predicted_s

    def rows(plan: Plan, names: str) -> int:
        return sum(t.out_region.rows.size for b in plan.blocks for t in b.tasks if t.device in names)

    assert rows(shared, "ab") < rows(shared, "cd")
    assert rows(free, "ab") == pytest.approx(rows(free, "cd"), rel=0.1)
