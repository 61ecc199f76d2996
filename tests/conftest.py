"""Shared fixtures: models are built once per session (VGG-16 is ~550 MB of weights)."""

from __future__ import annotations

import pytest
import torch

from edgeci_mqtt.models import StageChain, load_chain

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def chains() -> dict[str, StageChain]:
    """Each model's stage chain, seeded random weights, built lazily on first use."""

    class _Lazy(dict[str, StageChain]):
        def __missing__(self, name: str) -> StageChain:
            self[name] = load_chain(name, seed=0)
            return self[name]

    return _Lazy()
