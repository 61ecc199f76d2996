"""Shared fixtures, built once per session and only when used (VGG-16 is ~550 MB of
weights, and its float64 run takes seconds), and the test tiers (:mod:`tests.tiers`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import TypeVar

import pytest
import torch
from hypothesis import settings

from edgeci_mqtt.models import StageChain, load_chain
from tests.exactness import Reference, float64_chain, whole_model_reference
from tests.tiers import check_tiers

pytest_plugins = ("pytester",)  # tests/test_tiers.py runs the tier guard on sample modules

# Reproducible property tests: the same examples on every run and in CI. Explore more
# with e.g. `pytest --hypothesis-seed=N` or HYPOTHESIS_PROFILE=explore.
settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# One torch thread, as each device agent runs. On a 2-core machine shared with other work a
# second OpenMP thread waits for a busy core at every op: the README example took 25 s with
# two threads and 4.5 s with one while other suites ran. (`edgeci infer --threads 1` in
# test_cli.py also left one thread for the rest of a whole-suite run, by accident.)
torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The guard of the test tiers: every test declares one, and it agrees with what the
    test's code reaches (tests/tiers.py), or collection fails. (It runs before ``-m``
    deselects anything: every test is checked whichever tier runs.)"""
    check_tiers(items)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lazy(dict[K, V]):
    """A dict whose values are built on first use."""

    def __init__(self, build: Callable[[K], V]) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, key: K) -> V:
        self[key] = self._build(key)
        return self[key]


@pytest.fixture(scope="session")
def chains() -> dict[str, StageChain]:
    """Each model's stage chain, seeded random weights."""
    return Lazy(lambda name: load_chain(name, seed=0))


@pytest.fixture(scope="session")
def chains64(chains: dict[str, StageChain]) -> dict[str, StageChain]:
    """The float64 oracle of each chain in ``chains``: the same weights, in float64."""
    return Lazy(lambda name: float64_chain(chains[name]))


@pytest.fixture(scope="session")
def references(chains: dict[str, StageChain], chains64: dict[str, StageChain]) -> dict[tuple[str, int, int], Reference]:
    """By (model, height, width): a seeded random input and the whole model's answers."""

    def run(key: tuple[str, int, int]) -> Reference:
        name, height, width = key
        x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height * 1000 + width))
        return whole_model_reference(chains[name], chains64[name], x)

    return Lazy(run)
