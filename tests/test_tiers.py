"""Every test declares exactly one tier, and collection fails unless it agrees with what the
test's code and fixtures reach (tests/tiers.py)."""

from __future__ import annotations

from pkgutil import resolve_name
from types import FunctionType

import pytest

from tests.tiers import TIERS, decide_tier, reached_tier

pytestmark = pytest.mark.pure


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


def test_a_declared_tier_must_agree_with_what_the_code_reaches() -> None:
    assert decide_tier({"pure"}, "pure") == "pure"
    assert decide_tier({"broker"}, "broker") == "broker"
    with pytest.raises(ValueError, match=r"declares no tier \(its code reaches broker\).*pytest\.mark\.broker"):
        decide_tier(set(), "broker")
    with pytest.raises(ValueError, match="marked pure but reaches what the broker tier needs"):
        decide_tier({"pure"}, "broker")
    with pytest.raises(ValueError, match="marked pure but reaches what the emulated tier needs"):
        decide_tier({"pure"}, "emulated", reason="no reason lowers a tier")
    with pytest.raises(ValueError, match="give it one"):
        decide_tier({"broker", "emulated"}, "pure")


def test_a_tier_above_what_the_code_reaches_needs_a_reason() -> None:
    """Otherwise ``-m pure`` would silently miss a test that needs no broker."""
    with pytest.raises(ValueError, match=r"marked broker but its code reaches nothing of that tier \(only pure\)"):
        decide_tier({"broker"}, "pure")
    with pytest.raises(ValueError, match=r"marked emulated but its code reaches nothing of that tier \(only broker\)"):
        decide_tier({"emulated"}, "broker")
    assert decide_tier({"broker"}, "pure", reason="`edgeci demo` in a subprocess") == "broker"
    assert decide_tier({"emulated"}, "broker", reason="needs root") == "emulated"


SAMPLES = {
    "test_undeclared.py": "def test_a():\n    pass\n",
    "test_too_low.py": (
        "import pytest\nfrom edgeci_mqtt.broker.launch import BrokerProcess\n\npytestmark = pytest.mark.pure\n\n\n"
        "def test_b(tmp_path):\n    BrokerProcess(tmp_path, ['dev-1']).stop()\n"
    ),
    "test_too_high.py": "import pytest\n\npytestmark = pytest.mark.broker\n\n\ndef test_c():\n    pass\n",
    "test_two.py": "import pytest\n\npytestmark = pytest.mark.pure\n\n\n@pytest.mark.broker\ndef test_d():\n    pass\n",
}
"""Test modules that break the rule, one way each (only collected, never run)."""
GOOD = (
    "import pytest\nfrom edgeci_mqtt.emulation.network import up\n\n\n"
    "@pytest.mark.pure\n@pytest.mark.parametrize('n', [1, 2])\ndef test_pure(n):\n    pass\n\n\n"
    "@pytest.mark.broker(reason='a subprocess starts Mosquitto')\ndef test_unseen():\n    pass\n\n\n"
    "@pytest.mark.emulated\ndef test_root():\n    up\n"
)
"""A module that mixes tiers as the rule says."""
INI = "[pytest]\nmarkers =\n    pure\n    broker\n    emulated\n"


def test_the_project_conftest_refuses_to_collect_tests_in_the_wrong_tier(pytester: pytest.Pytester) -> None:
    """The guard itself: this project's collection hook, on modules that break the rule."""
    pytester.makeini(INI)
    pytester.makeconftest("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    pytester.makefile(".py", **{name.removesuffix(".py"): text for name, text in SAMPLES.items()})
    result = pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = result.stderr.str()
    assert "test_undeclared.py::test_a declares no tier (its code reaches pure)" in errors
    assert "test_too_low.py::test_b is marked pure but reaches what the broker tier needs" in errors
    assert "test_too_high.py::test_c is marked broker but its code reaches nothing of that tier" in errors
    assert "test_two.py::test_d has the tier markers ['broker', 'pure']" in errors
    # before -m deselects anything: running one tier checks every test
    result = pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider", "-m", "emulated")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "test_too_low.py::test_b is marked pure" in result.stderr.str()


def test_the_project_conftest_collects_a_module_that_follows_the_rule(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    pytester.makepyfile(test_mixed=GOOD)
    for tier, selected in (
        ("pure", ["test_pure[1]", "test_pure[2]"]),
        ("broker", ["test_unseen"]),
        ("emulated", ["test_root"]),
    ):
        result = pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider", "-m", tier)
        assert result.ret == pytest.ExitCode.OK, result.stderr.str()
        assert [line.split("::")[1] for line in result.outlines if "::" in line] == selected


def test_every_collected_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    for item in request.session.items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}  # (its module's and its own may agree)
        assert len(tiers) == 1, (item.nodeid, tiers)
