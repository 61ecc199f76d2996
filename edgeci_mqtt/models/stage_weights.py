"""Weights over the broker: one stage at a time, sha256-verified, cached on disk.

A device started with ``--fetch-weights`` holds only model skeletons (meta tensors:
geometry, no memory). Before the first task of a stage reaches it, the orchestrator
sends that stage's parameters and buffers; the device verifies them, caches them under
its cache directory and materialises just that module. A VGG-16 device therefore never
holds the 470 MB classifier, which runs on the orchestrator.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.models.weights import allocate
from edgeci_mqtt.wire import WeightsMessage, decode, encode

__all__ = [
    "WeightCache",
    "checked_stage",
    "install",
    "materialise",
    "stage_state",
    "state_sha256",
    "verify",
    "weights_message",
]


def stage_state(model: nn.Module, stage: str) -> dict[str, Tensor]:
    """The ``state_dict`` entries of one stage (its module path and everything below)."""
    prefix = stage + "."
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def state_sha256(state: dict[str, Tensor]) -> str:
    sha = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().contiguous().cpu()
        sha.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        sha.update(tensor.numpy().tobytes())
    return sha.hexdigest()


def weights_message(model: str, digest: str, stage: str, state: dict[str, Tensor]) -> WeightsMessage:
    tensors = {k: v.detach().contiguous().numpy() for k, v in state.items()}
    return WeightsMessage(model, digest, stage, tensors, state_sha256(state))


def verify(message: WeightsMessage) -> dict[str, Tensor]:
    """The stage's tensors, if every one decodes and the sha256 matches."""
    state = {k: torch.from_numpy(v) for k, v in message.tensors.items()}
    if state_sha256(state) != message.sha256:
        raise WireError(f"weights of {message.model} stage {message.stage}: sha256 mismatch")
    return state


def checked_stage(model: nn.Module, stage: str, state: dict[str, Tensor]) -> tuple[nn.Module, dict[str, Tensor]]:
    """The module of ``stage`` and ``state`` keyed for it, if every key and shape fits."""
    try:
        module = model.get_submodule(stage)
    except AttributeError as exc:
        raise WireError(f"no stage {stage!r} in the model") from exc
    prefix = stage + "."
    local = {k[len(prefix) :]: v for k, v in state.items()}
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in local.items()}
    if got != expected:
        raise WireError(f"weights of stage {stage}: {got} do not match {expected}")
    return module, local


def materialise(module: nn.Module, local: dict[str, Tensor]) -> None:
    """Give ``module`` real storage and load ``local`` (already checked) into it."""
    allocate(module)
    with torch.no_grad():
        module.load_state_dict(local, strict=True)
    module.eval()


def install(model: nn.Module, stage: str, state: dict[str, Tensor]) -> None:
    """Materialise the module of ``stage`` and load ``state`` into it (keys checked)."""
    materialise(*checked_stage(model, stage, state))


_SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")  # no "." or "..", no separators


class WeightCache:
    """Verified stage weights on disk: ``<dir>/<digest>/<stage>.msgpack``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, digest: str, stage: str) -> Path:
        if not _SAFE.match(digest) or not _SAFE.match(stage):
            raise WireError(f"unsafe cache name {digest!r}/{stage!r}")
        return self.directory / digest / f"{stage}.msgpack"

    def save(self, message: WeightsMessage) -> None:
        path = self._path(message.digest, message.stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(encode(message))
        tmp.replace(path)

    def has(self, digest: str, stage: str) -> bool:
        return self._path(digest, stage).is_file()

    def load(self, digest: str, stage: str) -> WeightsMessage | None:
        path = self._path(digest, stage)
        if not path.is_file():
            return None
        try:
            message = decode(path.read_bytes(), WeightsMessage)
        except (OSError, EdgeCIError):
            path.unlink(missing_ok=True)  # corrupt: fetch again
            return None
        assert isinstance(message, WeightsMessage)
        return message

    def listing(self) -> dict[str, list[str]]:
        if not self.directory.is_dir():
            return {}
        return {
            d.name: sorted(p.stem for p in d.glob("*.msgpack"))
            for d in sorted(self.directory.iterdir())
            if d.is_dir() and _SAFE.match(d.name)
        }
