"""The models a process holds, by name, with a digest that says which weights they are.

Devices and orchestrators must agree on the weights before tiles computed on one can
be stitched on the other; the digest in a device's birth message is how the
orchestrator knows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from edgeci_mqtt.core.geometry import FeatureShape
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.models import MODEL_NAMES, StageChain, load_chain
from edgeci_mqtt.planner.costs import RowModel

__all__ = ["HeldModel", "ModelStore", "parse_model_specs", "weights_digest"]


def weights_digest(name: str, weights: Path | None, seed: int) -> str:
    if weights is None:
        return hashlib.sha256(f"{name}:random:{seed}".encode()).hexdigest()[:16]
    sha = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


@dataclass
class HeldModel:
    chain: StageChain
    digest: str
    rows: dict[tuple[int, int], RowModel]

    def shapes(self, height: int, width: int) -> list[FeatureShape]:
        return self.chain.shapes(height, width)

    def row_model(self, height: int, width: int) -> RowModel:
        key = (height, width)
        if key not in self.rows:
            self.rows[key] = RowModel(self.chain.stages, self.chain.shapes(height, width))
        return self.rows[key]


def parse_model_specs(specs: list[str]) -> dict[str, Path | None]:
    """``["vgg16", "resnet34=weights.pth"]`` -> name to weights file (None: seeded random)."""
    models: dict[str, Path | None] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if name not in MODEL_NAMES:
            raise EdgeCIError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
        models[name] = Path(path) if path else None
    return models


class ModelStore:
    """Models built once at start-up (building VGG-16 takes about a second)."""

    def __init__(self, models: dict[str, Path | None], seed: int = 0) -> None:
        self.held: dict[str, HeldModel] = {
            name: HeldModel(load_chain(name, weights, seed), weights_digest(name, weights, seed), {})
            for name, weights in models.items()
        }

    @property
    def digests(self) -> dict[str, str]:
        return {name: held.digest for name, held in self.held.items()}

    def get(self, name: str) -> HeldModel:
        if name not in self.held:
            raise EdgeCIError(f"model {name!r} is not held here (held: {', '.join(self.held) or 'none'})")
        return self.held[name]
