"""Models people bring: an ONNX file, or a PyTorch module named ``package.module:factory``.

Both become a :class:`~edgeci_mqtt.models.StageChain` through the graph
(:mod:`edgeci_mqtt.graph`) at one input size, and from there every command and strategy
treats them as the built-in models.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph.fx_reader import read_module
from edgeci_mqtt.graph.onnx_reader import read_onnx
from edgeci_mqtt.models.graph_model import GraphModel
from edgeci_mqtt.models.stage_chain import StageChain, stage_chain

__all__ = ["DEFAULT_SIZE", "import_file", "import_module", "module_factory"]

DEFAULT_SIZE = 224
"""Input side a module (or a file with a dynamic size) is imported at when none is given."""


def import_file(path: Path, size: int | None = None) -> StageChain:
    """The ONNX file at ``path`` as a chain, at its own input size (or ``size`` where it
    leaves the size open, or checked against it)."""
    graph, weights = read_onnx(path, None if size is None else (size, size))
    return stage_chain(GraphModel(graph, weights), graph.name)


def module_factory(spec: str) -> nn.Module:
    """The module ``package.module:factory()`` builds (the factory takes no arguments)."""
    where, _, factory = spec.partition(":")
    if not where or not factory:
        raise ModelError(f"--model-module {spec!r}: expected package.module:factory")
    try:
        made = getattr(importlib.import_module(where), factory)()
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"--model-module {spec!r}: {exc}") from exc
    if not isinstance(made, nn.Module):
        raise ModelError(f"--model-module {spec!r} made a {type(made).__name__}, not a torch module")
    return made


def import_module(spec: str, size: int | None = None) -> StageChain:
    """The module ``spec`` names, traced at ``size`` (default :data:`DEFAULT_SIZE`)."""
    module = module_factory(spec)
    side = size or DEFAULT_SIZE
    graph, weights = read_module(module, (side, side), name=spec.rpartition(":")[2])
    return stage_chain(GraphModel(graph, weights), graph.name)
