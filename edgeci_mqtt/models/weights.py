"""Weights: seeded random initialisation, or a torchvision-format ``state_dict`` file.

Loading checks every key and shape first, so a wrong file fails with one message
naming what is missing, extra or mis-shaped, instead of torch's stack trace.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.core.work import LINEAR_CHUNK_ROWS, chunks_of
from edgeci_mqtt.errors import WeightsError

__all__ = [
    "TailSource",
    "allocate",
    "fill_linear_rows",
    "init_weights",
    "load_weights",
    "read_state_dict",
]

_SHOWN = 5  # keys listed per problem before "... and N more"


def allocate(model: nn.Module, leave: type[nn.Module] | None = None) -> None:
    """Give every parameter and buffer of ``model`` on the meta device uninitialised CPU
    storage of its shape, in place, except in modules of type ``leave``.

    Not ``Module.to_empty``: from the meta device its ``empty_like`` left the process
    holding far more memory than the tensors it made, which a device with 1 GB cannot
    spare (docs/RUNTIME.md, weights).
    """
    for module in model.modules():
        if leave is not None and isinstance(module, leave):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.is_meta:
                fresh = torch.empty(param.shape, dtype=param.dtype)
                setattr(module, name, nn.Parameter(fresh, requires_grad=param.requires_grad))
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_meta:
                setattr(module, name, torch.empty(buffer.shape, dtype=buffer.dtype))


def init_weights(model: nn.Module, seed: int) -> None:
    """Seeded random weights with realistic scales.

    He init for convolutions; conv biases and BN affine parameters random rather than
    torchvision's 0/1 defaults, so that tests notice a tile that mishandles them. BN
    running statistics are then calibrated on one seeded random batch, as in a
    trained network, so activations stay O(1) through deep residual stacks instead
    of growing block after block.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                if module.bias is not None:
                    nn.init.uniform_(module.bias, -0.1, 0.1, generator=gen)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5, generator=gen)
                nn.init.normal_(module.bias, 0.0, 0.1, generator=gen)
            elif isinstance(module, nn.Linear) and not module.weight.is_meta:  # meta: left out on purpose
                fill_linear_rows(module.weight, seed, name, 0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    _calibrate_batch_norm(model, gen)


def fill_linear_rows(target: Tensor, seed: int, module: str, start: int) -> None:
    """Fill ``target`` with rows ``start ..`` of the seeded weight of the fully connected
    layer named ``module`` (the same values whichever rows are made, and in whatever order)."""
    rows = target.shape[0]
    for chunk in chunks_of(Span(start, start + rows)):
        low, high = chunk * LINEAR_CHUNK_ROWS, (chunk + 1) * LINEAR_CHUNK_ROWS
        digest = hashlib.sha256(f"{seed}:{module}:{chunk}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        drawn = torch.empty(LINEAR_CHUNK_ROWS, target.shape[1]).normal_(0.0, 0.01, generator=gen)
        lo, hi = max(low, start), min(high, start + rows)
        target[lo - start : hi - start] = drawn[lo - low : hi - low]


def _calibrate_batch_norm(model: nn.Module, gen: torch.Generator) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad(), _without_linear(model):  # the statistics are set before any of them
        model(torch.randn(4, 3, 64, 64, generator=gen))
    model.eval()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.zero_()


@dataclass(frozen=True)
class TailSource:
    """Where a model built without its fully connected layers gets them when part of the
    tail is given to it: seeded like :func:`init_weights`, or from the weights file
    (memory-mapped, so only the rows read are loaded)."""

    seed: int = 0
    path: Path | None = None

    def rows(self, name: str, layer: nn.Linear, start: int, stop: int) -> tuple[Tensor, Tensor | None]:
        """Weight and bias rows ``start .. stop`` of the layer ``name``."""
        if self.path is None:
            weight = torch.empty(stop - start, layer.in_features)
            fill_linear_rows(weight, self.seed, name, start)
            return weight, (torch.zeros(stop - start) if layer.bias is not None else None)
        state = _mapped(self.path)
        bias = state.get(f"{name}.bias")
        return state[f"{name}.weight"][start:stop].clone(), (bias[start:stop].clone() if bias is not None else None)

    def fill(self, name: str, layer: nn.Linear) -> None:
        """Make the whole layer, in place."""
        weight, bias = self.rows(name, layer, 0, layer.out_features)
        if bias is not None:  # the bias first: readers take a real weight as the layer being made
            layer.bias = nn.Parameter(bias, requires_grad=False)
        layer.weight = nn.Parameter(weight, requires_grad=False)


@functools.cache
def _mapped(path: Path) -> dict[str, Tensor]:
    return read_state_dict(path)


@contextmanager
def _without_linear(model: nn.Module) -> Iterator[None]:
    """Fully connected layers replaced by identities for a while (a model built without
    them, on the meta device, can still be run to calibrate its batch norms)."""
    swapped = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, _ in swapped:
        setattr(parent, name, nn.Identity())
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` saved with ``torch.save`` (tensors only, no pickled code)."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:  # mapped, not read: a model built without its tail never touches those pages
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a file in the legacy format cannot be mapped
        data = None
    except Exception as exc:  # torch raises many types for a bad file
        raise WeightsError(f"{path} is not a PyTorch weights file: {exc}".splitlines()[0]) from exc
    if data is None:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"{path} is not a PyTorch weights file: {exc}".splitlines()[0]) from exc
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return dict(data)


def load_weights(model: nn.Module, path: Path, model_name: str = "model") -> None:
    """Load ``path`` into ``model`` with every key and shape checked first."""
    state = read_state_dict(path)
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if extra:
        problems.append(f"unexpected keys: {_listing(extra)}")
    if wrong:
        problems.append(f"mis-shaped: {_listing(wrong)}")
    if problems:
        raise WeightsError(f"{path} does not fit {model_name}: " + "; ".join(problems))
    held = {k: v for k, v in state.items() if not expected[k].is_meta}  # keys checked above
    model.load_state_dict(held, strict=len(held) == len(state))
