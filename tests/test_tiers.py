"""Every test gets exactly one tier, from what its code and fixtures reach."""

from __future__ import annotations

from pkgutil import resolve_name
from types import FunctionType

import pytest

from tests.tiers import TIERS, decide_tier, reached_tier


def function_from(source: str, **names: str) -> FunctionType:
    """The function ``f`` defined by ``source``, its globals resolved from dotted paths, as
    if it lived in the ``tests`` package. Built from text so that this module itself reaches
    no broker and no root (its tests stay ``pure``)."""
    namespace = {"__name__": "tests.sample", **{alias: resolve_name(path) for alias, path in names.items()}}
    exec(source, namespace)
    function = namespace["f"]
    assert isinstance(function, FunctionType)
    return function


CLUSTER = "tests.cluster:local_cluster"  # starts Mosquitto through BrokerProcess
EMULATED = "edgeci_mqtt.emulation.processes:emulated_run"


@pytest.mark.parametrize(
    ("source", "names", "tier"),
    [
        ("def f():\n    return 1 + 1\n", {}, "pure"),
        (
            "def f(tmp_path):\n    with local_cluster(tmp_path, 2, 'smallcnn'):\n        pass\n",
            {"local_cluster": CLUSTER},
            "broker",
        ),
        ("def f():\n    return [local_cluster for _ in range(2)]\n", {"local_cluster": CLUSTER}, "broker"),
        (
            "def f(spec, tmp_path):\n    with emulated_run(spec, tmp_path, 'smallcnn'):\n        pass\n",
            {"emulated_run": EMULATED},
            "emulated",
        ),
        (
            "def f():\n    return local_cluster, CgroupRoot\n",
            {"local_cluster": CLUSTER, "CgroupRoot": "edgeci_mqtt.emulation.network:CgroupRoot"},
            "emulated",
        ),
        ("def f():\n    return collect\n", {"collect": "tests.cluster:collect"}, "pure"),
    ],
)
def test_the_tier_is_what_the_code_reaches(source: str, names: dict[str, str], tier: str) -> None:
    assert reached_tier([function_from(source, **names)]) == tier


def test_helpers_of_the_tests_package_are_followed() -> None:
    helper = function_from(
        "def f(tmp_path):\n    return local_cluster(tmp_path, 1, 'smallcnn')\n", local_cluster=CLUSTER
    )
    caller = function_from("def f(tmp_path):\n    return helper(tmp_path)\n")
    caller.__globals__["helper"] = helper
    assert reached_tier([caller]) == "broker"
    assert reached_tier([function_from("def f():\n    return 1\n"), caller]) == "broker"  # e.g. a fixture


def test_an_explicit_marker_may_raise_the_tier_but_not_lower_it() -> None:
    assert decide_tier(set(), "broker") == "broker"
    assert decide_tier({"broker"}, "pure") == "broker"  # e.g. `edgeci demo` in a subprocess
    with pytest.raises(ValueError, match="marked pure but reaches what the broker tier needs"):
        decide_tier({"pure"}, "broker")
    with pytest.raises(ValueError, match="give it one"):
        decide_tier({"broker", "emulated"}, "pure")


def test_every_collected_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    for item in request.session.items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        assert len(tiers) == 1, (item.nodeid, tiers)
