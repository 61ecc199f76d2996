"""Test tiers: ``pure`` (no broker, no root), ``broker`` (starts Mosquitto), ``emulated`` (root).

A test's tier is what it reaches: the code of the test and of every fixture it uses (directly
or through other fixtures), following the helpers of this test package they call. Reaching
Mosquitto makes a test ``broker``; reaching network namespaces or CPU cgroups makes it
``emulated``. A new test that starts a cluster through a fixture or ``local_cluster`` is
therefore tiered without anyone remembering. What no code shows, such as ``edgeci demo``
run in a subprocess, needs an explicit ``broker`` or ``emulated`` marker.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from types import CodeType, FunctionType

import pytest

from edgeci_mqtt.broker.config import write_broker_config
from edgeci_mqtt.broker.launch import BrokerProcess
from edgeci_mqtt.emulation.network import CgroupRoot, down, up
from edgeci_mqtt.emulation.processes import emulated_run

TIERS = ("pure", "broker", "emulated")
"""In rising order: a test reaching two tiers' resources belongs to the higher one."""

ENTRY_POINTS: dict[object, str] = {
    BrokerProcess: "broker",
    write_broker_config: "broker",  # it creates the users through a short-lived Mosquitto
    inspect.unwrap(emulated_run): "emulated",
    CgroupRoot: "emulated",
    up: "emulated",
    down: "emulated",
}
"""What starts Mosquitto, and what needs root (namespaces, shaping, cgroups)."""


def _codes(code: CodeType) -> Iterator[CodeType]:
    """``code`` and the code of the functions, lambdas and comprehensions nested in it."""
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _codes(const)


def _body(function: Callable[..., object]) -> FunctionType | None:
    """The function whose code runs: under ``@given``, Hypothesis's inner test."""
    function = getattr(getattr(function, "hypothesis", None), "inner_test", function)
    function = inspect.unwrap(function)
    return function if isinstance(function, FunctionType) else None


def reached_tier(functions: list[Callable[..., object]]) -> str:
    """The highest tier whose entry point the ``functions`` reach through the globals they
    name, following functions defined in the ``tests`` package."""
    tier, seen, todo = "pure", set(), [_body(f) for f in functions]
    while todo:
        function = todo.pop()
        if function is None or function in seen:
            continue
        seen.add(function)
        for name in {n for code in _codes(function.__code__) for n in code.co_names}:
            target = function.__globals__.get(name)
            if not isinstance(target, type | FunctionType):
                continue  # data, modules, attribute names: nothing that runs
            target = inspect.unwrap(target)
            if target in ENTRY_POINTS:
                tier = max(tier, ENTRY_POINTS[target], key=TIERS.index)
            elif isinstance(target, FunctionType) and target.__module__.split(".")[0] == "tests":
                todo.append(target)
    return tier


def decide_tier(marked: set[str], reached: str) -> str:
    """The explicit tier marker if there is one (it may raise the tier, not lower it), else
    the tier reached."""
    if len(marked) > 1:
        raise ValueError(f"has the tier markers {sorted(marked)}; give it one")
    tier = next(iter(marked), reached)
    if TIERS.index(tier) < TIERS.index(reached):
        raise ValueError(f"is marked {tier} but reaches what the {reached} tier needs")
    return tier


def item_tier(item: pytest.Item) -> str:
    """The tier of a collected test, from its markers and the code of it and its fixtures."""
    assert isinstance(item, pytest.Function)
    fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
    marked = {m.name for m in item.iter_markers() if m.name in TIERS}
    try:
        return decide_tier(marked, reached_tier([item.function, *fixtures]))
    except ValueError as exc:
        raise pytest.UsageError(f"{item.nodeid} {exc}") from None
