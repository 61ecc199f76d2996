"""Read a PyTorch module into a :class:`~edgeci_mqtt.graph.graph.Graph` by tracing it with ``torch.fx``.

The module is traced symbolically, then run once on a zero image of the requested size
with an interpreter that records every node's value: what is not a tensor there (sizes,
``x.shape[2:]``, arithmetic on them) is a constant at that size, which is how shape code
folds without a special case. Every tensor node becomes a step of a
:class:`~edgeci_mqtt.graph.builder.GraphBuilder`, by the module class or the function it
calls (:mod:`.fx_modules`, :mod:`.fx_functions`). Weights keep their ``state_dict`` names
(``features.0.weight``), so checkpoints load as they are and a device can fetch a stage's
weights by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph import ops
from edgeci_mqtt.graph.builder import Array, GraphBuilder
from edgeci_mqtt.graph.fx_functions import FUNCTIONS
from edgeci_mqtt.graph.fx_modules import MODULES
from edgeci_mqtt.graph.graph import Graph

__all__ = ["read_module"]


def read_module(
    module: nn.Module, size: tuple[int, int], in_channels: int = 3, name: str | None = None
) -> tuple[Graph, dict[str, Array]]:
    """The graph of ``module`` (in eval mode) for one ``in_channels`` x ``size`` image, and its weights."""
    name = name or type(module).__name__
    module = module.eval()
    try:
        traced = fx.symbolic_trace(module)
    except Exception as exc:  # fx raises TraceError, TypeError, ... for data-dependent Python
        raise ModelError(f"{name}: torch.fx cannot trace it ({type(exc).__name__}: {exc})") from exc
    values = _Recorder(traced).values(torch.zeros(1, in_channels, *size))
    return _FxReader(traced, values, name).read()


class _Recorder(fx.Interpreter):
    """Runs the traced module once, keeping each node's value."""

    def values(self, x: Tensor) -> dict[str, Any]:
        self.seen: dict[str, Any] = {}
        with torch.no_grad():
            self.run(x)
        return self.seen

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.seen[n.name] = value
        return value


class _FxReader:
    def __init__(self, traced: fx.GraphModule, values: dict[str, Any], name: str) -> None:
        self.traced, self.values, self.name = traced, values, name
        self.graph = GraphBuilder(name)
        self.modules = dict(traced.named_modules())

    def read(self) -> tuple[Graph, dict[str, Array]]:
        for name, tensor in self.traced.state_dict().items():
            self.graph.constant(name, tensor.detach().cpu().numpy())
        outputs: list[str] = []
        for node in self.traced.graph.nodes:
            try:
                if node.op == "output":
                    outputs = [self.graph.output(t.name) for t in _flat(node.args[0])]
                else:
                    self._node(node)
            except ModelError as exc:
                raise ModelError(f"{self.name}: node {node.name!r} ({_what(node)}): {exc}") from exc
        return self.graph.build(outputs)

    # --- values -----------------------------------------------------------------------------

    def arg(self, value: Any) -> Any:
        """A node argument as a concrete value (nodes of non-tensors are constants here)."""
        if isinstance(value, fx.Node):
            v = self.values[value.name]
            return value.name if isinstance(v, Tensor) else v
        if isinstance(value, list | tuple):
            return type(value)(self.arg(v) for v in value)
        return value

    def tensor(self, value: Any, label: str) -> str:
        """A tensor operand's name; a Python number becomes a named constant."""
        if isinstance(value, fx.Node) and isinstance(self.values[value.name], Tensor):
            return self.graph.resolve(value.name)
        if isinstance(value, int | float):
            name = f"{label}:constant"
            self.graph.constant(name, np.array(value, dtype=np.float32))
            return name
        raise ModelError(f"operand {value!r} is not a tensor")

    def _node(self, node: fx.Node) -> None:
        value = self.values.get(node.name)
        if node.op == "placeholder":
            if not isinstance(value, Tensor):
                raise ModelError("the model's input is not a tensor")
            self.graph.set_input(node.name, tuple(int(d) for d in value.shape))
            return
        if node.op == "get_attr":
            self.graph.constant(node.name, value.detach().numpy() if isinstance(value, Tensor) else np.asarray(value))
            return
        if not isinstance(value, Tensor):  # shape arithmetic: a constant at this size
            if not isinstance(value, int | float | tuple | list | torch.Size | bool | type(None)):
                raise ModelError(f"it computes a {type(value).__name__}, neither a tensor nor a size")
            return
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            convert = MODULES.get(type(module))
            if convert is None:
                raise ModelError(f"module {type(module).__name__} is not supported")
            convert(self, node, module)
        elif node.op in ("call_function", "call_method"):
            key = node.target if node.op == "call_function" else str(node.target).rstrip("_")
            convert_f = FUNCTIONS.get(key)
            if convert_f is None:
                raise ModelError(f"{_what(node)} is not supported")
            convert_f(self, node)
        else:
            raise ModelError(f"node kind {node.op} is not supported")

    def emit(self, node: fx.Node, op: ops.Op, operands: list[str]) -> None:
        tail = not op.spatial
        self.graph.emit(node.name, op, [self.graph.operand(t, tail) for t in operands], node.name)

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(int(d) for d in self.values[node.name].shape)

    def view(self, node: fx.Node, perm: list[int] | None = None) -> None:
        source = node.args[0]
        assert isinstance(source, fx.Node)
        out = self.shape(node)
        fold: Callable[[Array], Array] = (
            (lambda index: np.transpose(index, perm)) if perm is not None else (lambda index: index.reshape(out))
        )
        tensor = self.graph.resolve(source.name)
        if self.graph.is_map(tensor) or self.graph.is_viewed(tensor):
            self.graph.view(node.name, tensor, node.name, fold, perm)
        elif perm is not None:
            self.graph.emit(node.name, ops.Transpose(perm=tuple(perm)), [self.graph.operand(tensor, True)], node.name)
        else:
            self.graph.emit(node.name, ops.Reshape(shape=out), [self.graph.operand(tensor, True)], node.name)


def _flat(value: Any) -> list[fx.Node]:
    if isinstance(value, fx.Node):
        return [value]
    if isinstance(value, list | tuple):
        return [n for v in value for n in _flat(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _flat(v)]
    raise ModelError(f"output {value!r} is not a tensor")


def _what(node: fx.Node) -> str:
    target = node.target
    return getattr(target, "__name__", str(target)) if node.op != "call_module" else f"module {target}"
