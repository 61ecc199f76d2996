"""Cluster files and device profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeci_mqtt.core.link import Link, Medium
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import ClusterError, EdgeCIError
from edgeci_mqtt.planner.cluster import REFERENCE_CLUSTERS, load_cluster
from edgeci_mqtt.planner.environment import environment_from_cluster
from edgeci_mqtt.profiling import measure_profile
from tests.planning import flat_profile

pytestmark = pytest.mark.pure

REPO = Path(__file__).resolve().parent.parent


def test_reference_clusters_ship_with_the_package() -> None:
    sizes = {name: len(load_cluster(name).devices) for name in REFERENCE_CLUSTERS}
    assert sizes == {"homo4": 4, "hetero4": 4, "hetero8": 8, "swarm64": 64}
    hetero4 = load_cluster("hetero4")
    assert hetero4.device("pi3").cpu == 0.1 and hetero4.device("pi3").link.bytes_per_s == 20e6 / 8
    assert hetero4.broker.cpu == 0.25 and not load_cluster("swarm64").emulate
    env = environment_from_cluster(hetero4, flat_profile(100.0))
    assert env.device("jetson").profile.conv_rate(576, 3136) == pytest.approx(40e9)
    assert env.orchestrator.rates["relu"] == pytest.approx(0.25 * 20e9)


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


GOOD = {
    "name": "t",
    "broker": {"cpu": 0.25, "bandwidth_mbit": 100, "latency_ms": 1},
    "devices": [{"name": "a", "cpu": 0.5, "bandwidth_mbit": 10, "latency_ms": 2}],
}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["devices"][0].update(cpu=-1), r"devices\[0\]\.cpu: must be positive"),
        (lambda d: d["devices"][0].update(cpu="fast"), r"devices\[0\]\.cpu: expected a number"),
        (lambda d: d["devices"][0].pop("latency_ms"), r"devices\[0\]: missing field latency_ms"),
        (lambda d: d["devices"][0].update(speed=3), r"unknown field\(s\) speed"),
        (lambda d: d["devices"].append(dict(d["devices"][0])), "'a' appears twice"),
        (lambda d: d.update(devices=[]), "non-empty list"),
        (lambda d: d.pop("broker"), "missing broker"),
        (lambda d: d["devices"][0].update(name="a b"), "name: expected letters"),
        (lambda d: d.update(emulate="yes"), "emulate must be true or false"),
    ],
)
def test_invalid_cluster_files_name_the_field(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    edit(data)
    with pytest.raises(ClusterError, match=message):
        load_cluster(write(tmp_path, data))


def test_unreadable_cluster_files(tmp_path: Path) -> None:
    assert load_cluster(write(tmp_path, GOOD)).devices[0].name == "a"
    with pytest.raises(ClusterError, match="does not exist"):
        load_cluster(tmp_path / "missing.yaml")
    with pytest.raises(ClusterError, match="not valid YAML"):
        load_cluster(write(tmp_path, "devices: [unclosed"))
    with pytest.raises(ClusterError, match="mapping at the top level"):
        load_cluster(write(tmp_path, "- 1\n- 2\n"))


def test_measured_profile_is_positive_ordered_and_round_trips() -> None:
    profile = measure_profile(threads=1)
    assert all(r > 0 for row in profile.conv_rates for r in row)
    assert list(profile.conv_depths) == sorted(profile.conv_depths)
    assert DeviceProfile.from_dict(yaml.safe_load(yaml.safe_dump(profile.to_dict()))) == profile
    conv = OpWork("conv", 10**9, 0, 576, 56 * 56)
    assert profile.op_seconds(conv) > 0
    assert profile.scaled(0.5).op_seconds(conv) == pytest.approx(2 * profile.op_seconds(conv))


def test_profile_prices_small_tiles_lower_per_flop_when_measured_so() -> None:
    profile = flat_profile()
    slow_small = DeviceProfile(
        profile.conv_depths,
        profile.conv_sides,
        ((50e9, 100e9), (50e9, 100e9)),
        profile.rates,
        profile.pool_rates,
        0.0,
    )
    assert slow_small.conv_rate(1000, 7 * 7) == pytest.approx(50e9)
    assert slow_small.conv_rate(1000, 224 * 224) == pytest.approx(100e9)
    assert 50e9 < slow_small.conv_rate(1000, 40 * 40) < 100e9


def test_malformed_profiles_are_rejected() -> None:
    data = flat_profile().to_dict()
    del data["rates"]["fc"]
    with pytest.raises(EdgeCIError, match="fc"):
        DeviceProfile.from_dict(data)
    with pytest.raises(EdgeCIError, match="malformed device profile"):
        DeviceProfile.from_dict({"conv_depths": "x"})
    # the same rules for a profile file as for a profile on the wire: nothing the planner divides by is 0 or inf
    for changes, message in (
        ({"conv_depths": [0, 8]}, "not increasing positive"),
        ({"conv_sides": [7, 7]}, "not increasing positive"),
        ({"threads": float("inf")}, "malformed device profile"),
        ({"threads": 0}, "at least one thread"),
    ):
        with pytest.raises(EdgeCIError, match=message):
            DeviceProfile.from_dict({**flat_profile().to_dict(), **changes})


def test_links_round_trip_and_malformed_ones_are_refused() -> None:
    for link in (Link(54.5, 2.25), Link(54.5, 2.25, Medium("wifi", 20.0))):
        assert Link.from_dict(link.to_dict()) == link
    for medium in ({"name": "wifi"}, {"name": "", "bandwidth_mbit": 5}, {"name": "w", "bandwidth_mbit": -1}, "wifi"):
        with pytest.raises(EdgeCIError, match=r"medium|malformed link"):
            Link.from_dict({"bandwidth_mbit": 10, "latency_ms": 1, "medium": medium})
    for bad in ({"bandwidth_mbit": 0, "latency_ms": 1}, {"bandwidth_mbit": 10, "latency_ms": -1}):
        with pytest.raises(EdgeCIError, match="not a positive bandwidth"):
            Link.from_dict(bad)
    for bad in ({}, {"bandwidth_mbit": "fast", "latency_ms": 1}, {"bandwidth_mbit": None, "latency_ms": 1}):
        with pytest.raises(EdgeCIError, match="malformed link"):
            Link.from_dict(bad)
