"""Weights: seeded random initialisation, or a torchvision-format ``state_dict`` file.

Loading checks every key and shape first, so a wrong file fails with one message
naming what is missing, extra or mis-shaped, instead of torch's stack trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from edgeci_mqtt.errors import WeightsError

__all__ = ["init_weights", "load_weights", "read_state_dict"]

_SHOWN = 5  # keys listed per problem before "... and N more"


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
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                if module.bias is not None:
                    nn.init.uniform_(module.bias, -0.1, 0.1, generator=gen)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5, generator=gen)
                nn.init.normal_(module.bias, 0.0, 0.1, generator=gen)
            elif isinstance(module, nn.Linear) and not module.weight.is_meta:  # meta: left out on purpose
                nn.init.normal_(module.weight, 0.0, 0.01, generator=gen)
                nn.init.zeros_(module.bias)
    _calibrate_batch_norm(model, gen)


def _calibrate_batch_norm(model: nn.Module, gen: torch.Generator) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64, generator=gen))
    model.eval()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.zero_()


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
