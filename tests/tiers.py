"""Test tiers: ``pure`` (no broker, no root), ``broker`` (starts Mosquitto), ``emulated`` (root).

The rule: every test declares its tier, and collection fails, naming each offending test,
unless the declaration agrees with what the test reaches.

- Declared: a module says ``pytestmark = pytest.mark.pure`` (or ``broker``, ``emulated``;
  in a list with its other marks). A module that mixes tiers marks each test instead, never
  itself as well: ``-m pure`` selects a test by any marker it carries, its module's too.
  Exactly one tier per test.
- Reached: the code of the test and of every fixture it uses (directly or through other
  fixtures), following the helpers of this test package they call, names an entry point of
  a tier (:data:`ENTRY_POINTS`): what starts Mosquitto makes it ``broker``; network
  namespaces, shaping or CPU cgroups make it ``emulated``. A test reaching two tiers'
  resources belongs to the higher.
- A test declared *below* what it reaches is an error (``-m pure`` would start a broker).
- A test declared *above* what it reaches is an error too (``-m pure`` would miss it),
  unless its marker says why the analysis cannot see it: what runs in a subprocess
  (``edgeci demo``, the CLI's ``cluster up``) or what needs root without naming an entry
  point, e.g. ``@pytest.mark.broker(reason="the demo starts Mosquitto in a subprocess")``.

So ``pytest -m pure`` runs exactly the tests that need no broker and no root, and a new test
that starts a cluster through a fixture or ``local_cluster`` cannot land in the wrong tier.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from types import CodeType, FunctionType

import pytest

from edgeci_mqtt.broker.config import write_broker_config
from edgeci_mqtt.broker.launch import BrokerProcess
from edgeci_mqtt.broker.mosquitto import MosquittoProcess
from edgeci_mqtt.emulation.network import CgroupRoot, down, up
from edgeci_mqtt.emulation.processes import emulated_run

TIERS = ("pure", "broker", "emulated")
"""In rising order: a test reaching two tiers' resources belongs to the higher one."""

ENTRY_POINTS: dict[object, str] = {
    BrokerProcess: "broker",
    MosquittoProcess: "broker",
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


def decide_tier(marked: set[str], reached: str, reason: str | None = None) -> str:
    """The tier a test declares (``marked``), if it agrees with the tier its code ``reached``;
    else a ValueError saying why. ``reason``: why it is declared above what it reaches."""
    if not marked:
        raise ValueError(
            f"declares no tier (its code reaches {reached}): give its module "
            f"`pytestmark = pytest.mark.{reached}`, or, in a module that mixes tiers, the test"
        )
    if len(marked) > 1:
        mixed = "a module that mixes tiers marks its tests, not itself"
        raise ValueError(f"has the tier markers {sorted(marked)}; give it one ({mixed})")
    (tier,) = marked
    if TIERS.index(tier) < TIERS.index(reached):
        raise ValueError(f"is marked {tier} but reaches what the {reached} tier needs")
    if TIERS.index(tier) > TIERS.index(reached) and not reason:
        raise ValueError(
            f"is marked {tier} but its code reaches nothing of that tier (only {reached}): mark it {reached}, or, "
            f"if it reaches {tier} out of sight (a subprocess, root), say so: pytest.mark.{tier}(reason=...)"
        )
    return tier


def item_tier(item: pytest.Item) -> str:
    """The tier of a collected test, from its markers and the code of it and its fixtures."""
    assert isinstance(item, pytest.Function)
    fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
    marks = [m for m in item.iter_markers() if m.name in TIERS]
    reason = next((str(m.kwargs["reason"]) for m in marks if m.kwargs.get("reason")), None)
    return decide_tier({m.name for m in marks}, reached_tier([item.function, *fixtures]), reason)


def check_tiers(items: list[pytest.Item]) -> None:
    """The guard, run at collection: a UsageError naming every test whose tier is wrong."""
    problems: dict[str, str] = {}
    for item in items:
        try:
            item_tier(item)
        except ValueError as exc:  # once per test function, not per parameter set
            problems.setdefault(item.nodeid.split("[")[0], str(exc))
    if problems:
        listed = "\n".join(f"  {test} {why}" for test, why in problems.items())
        raise pytest.UsageError(f"test tiers (see tests/tiers.py):\n{listed}")
