"""An imported graph as a torch module the rest of the project already knows how to split.

:class:`GraphModel` offers what a hand-written model offers (``spatial_layers``, ``tail``,
``tail_parts``): its spatial layers are the graph's stages (:func:`~edgeci_mqtt.graph.cuts.cut`),
each a :class:`GraphBlock` whose parameters are the weights its nodes read, so
``state_dict`` prefixes name a stage's weights (what a device fetches, what a digest
covers) and ``.double()`` gives the float64 oracle. The tail's fully connected layers
are real :class:`torch.nn.Linear` modules, so the tail can be split by rows as the
hand-written tails are. :class:`GraphKernel` runs any output region of a block.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.kernels import Kernel
from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph.cuts import cut
from edgeci_mqtt.graph.graph import Graph, Node
from edgeci_mqtt.graph.ops import Gemm, GlobalPool
from edgeci_mqtt.graph.run import run_regions
from edgeci_mqtt.graph.stage import GraphStage, segment_graph
from edgeci_mqtt.graph.torch_ops import run_tail
from edgeci_mqtt.models.tail_parts import TailParts

__all__ = ["GraphBlock", "GraphKernel", "GraphModel"]


def _tensor(array: np.ndarray) -> Tensor:
    """The weight as a tensor sharing the array's memory where it may (a traced module's
    weights are not held twice), else a copy (an ONNX file's arrays are read-only)."""
    return torch.from_numpy(array) if array.flags.writeable else torch.tensor(array)


class _Weighted(nn.Module):
    """Holds named graph weights as parameters (their names made attribute-safe)."""

    def __init__(self, names: list[str], weights: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.keys = {name: f"w{i}" for i, name in enumerate(names)}
        for name, key in self.keys.items():
            self.register_parameter(key, nn.Parameter(_tensor(weights[name]), requires_grad=False))

    def params(self) -> dict[str, Tensor]:
        """The weights by their graph names, as they are now (a fetched stage replaces them)."""
        return {name: getattr(self, key) for name, key in self.keys.items()}


class GraphBlock(_Weighted):
    """One stage of an imported model: a segment's graph and the weights it reads."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray]) -> None:
        super().__init__(sorted(graph.weight_names), weights)
        self.graph = graph

    def forward(self, x: Tensor) -> Tensor:
        shape = self.graph.shapes[self.graph.input]
        whole = TileRegion.whole(shape[2], shape[3])
        out = self.graph.outputs[0]
        final = self.graph.shapes[out]
        return run_regions(self.graph, self.params(), x, whole, {out: TileRegion.whole(final[2], final[3])})[out]


class _TailRun(nn.Module):
    """Tail nodes run in order from one tensor. Each fully connected layer is an ``nn.Linear``
    and each global pooling an adaptive pool (the modules the planner prices a tail by)."""

    def __init__(self, nodes: tuple[Node, ...], weights: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.nodes = nodes
        names = sorted({w for n in nodes if not isinstance(n.op, Gemm) for w in n.op.weights()})
        self.others = _Weighted(names, weights)
        made = {f"l{i}": _module(n, weights) for i, n in enumerate(nodes)}
        self.layers = nn.ModuleDict({k: m for k, m in made.items() if m is not None})

    def forward(self, x: Tensor) -> Tensor:
        params = self.others.params()
        for i, node in enumerate(self.nodes):
            key = f"l{i}"
            x = self.layers[key](x) if key in self.layers else run_tail(node.op, x, params)
        return x


def _module(node: Node, weights: Mapping[str, np.ndarray]) -> nn.Module | None:
    if isinstance(node.op, Gemm):
        return _linear(node.op, weights)
    if isinstance(node.op, GlobalPool):
        return nn.AdaptiveAvgPool2d(1) if node.op.function == "mean" else nn.AdaptiveMaxPool2d(1)
    if node.op.spatial:
        raise ModelError(f"tail node {node.name} ({node.op.kind}) is a map op")
    return None


def _linear(op: Gemm, weights: Mapping[str, np.ndarray]) -> nn.Linear:
    """A Gemm as the ``nn.Linear`` it is (alpha and beta folded into its weights)."""
    w = _tensor(weights[op.weight])
    w = w if op.trans_b else w.t()
    layer = nn.Linear(op.in_features, op.out_features, bias=op.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w * op.alpha if op.alpha != 1.0 else w)
        if op.bias is not None:
            b = torch.tensor(weights[op.bias]).reshape(-1)
            layer.bias.copy_(b * op.beta if op.beta != 1.0 else b)
    return layer.requires_grad_(False)


class GraphModel(nn.Module):
    """An imported model, cut into stages and a tail (see the module)."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        cuts = cut(graph)
        self.graph, self.name = graph, graph.name
        self.in_channels = graph.input_shape[1]
        self.stages = nn.ModuleList(
            GraphBlock(segment_graph(graph, s, f"{graph.name}/stages.{k}"), weights)
            for k, s in enumerate(cuts.segments)
        )
        gemms = [i for i, n in enumerate(cuts.tail) if isinstance(n.op, Gemm)]
        first = gemms[0] if gemms else len(cuts.tail)
        self.head = _TailRun(cuts.tail[:first], weights)
        self.split = bool(gemms)
        if gemms:
            gemm = cuts.tail[first].op
            assert isinstance(gemm, Gemm)
            self.first = _linear(gemm, weights)
            self.rest = _TailRun(cuts.tail[first + 1 :], weights)
        self.output_size = int(np.prod(graph.shapes[graph.outputs[0]]))

    def spatial_layers(self) -> list[tuple[str, nn.Module]]:
        return [(f"stages.{k}", block) for k, block in enumerate(self.stages)]

    def tail(self, x: Tensor) -> Tensor:
        x = self.head(x)
        return self.rest(self.first(x)) if self.split else x

    def tail_parts(self) -> TailParts | None:
        """Head, first fully connected layer, rest; None when the tail has none (the output is
        a map): it then runs whole where the answer is made."""
        return TailParts(head=self.head, first=self.first, rest=self.rest) if self.split else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.stages:
            x = block(x)
        return self.tail(x)


class GraphKernel(Kernel):
    """Runs any output region of a :class:`GraphBlock`."""

    stage: GraphStage

    def __init__(self, name: str, block: GraphBlock) -> None:
        self.block = block
        self.stage = GraphStage(name=name, graph=block.graph)

    def run(self, x: Tensor, x_region: TileRegion, out_region: TileRegion, in_shape: FeatureShape) -> Tensor:
        self.stage.output_shape(in_shape)
        out = self.block.graph.outputs[0]
        return run_regions(self.block.graph, self.block.params(), x, x_region, {out: out_region})[out]
