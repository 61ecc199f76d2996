"""Shared fixtures: models are built once per session (VGG-16 is ~550 MB of weights)."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from edgeci_mqtt.models import StageChain, load_chain

# Reproducible property tests: the same examples on every run and in CI. Explore more
# with e.g. `pytest --hypothesis-seed=N` or HYPOTHESIS_PROFILE=explore.
settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def chains() -> dict[str, StageChain]:
    """Each model's stage chain, seeded random weights, built lazily on first use."""

    class _Lazy(dict[str, StageChain]):
        def __missing__(self, name: str) -> StageChain:
            self[name] = load_chain(name, seed=0)
            return self[name]

    return _Lazy()
