"""A model as one graph of ops at a fixed input size, and the regions that flow back through it.

Every importer (ONNX files, traced PyTorch modules) ends here, so everything after
import (region propagation, cutting into stages, execution, pricing) reads one form.
A :class:`Graph` is plain data: nodes in an order where every operand comes before its
user, the shape of every tensor, and the names of its weights (the arrays themselves
are the importer's to hand over: :class:`Weights`). It is checked once when built, so a
graph that exists is consistent: every operand defined, every shape what its op infers,
the tail after the last map.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.errors import GeometryError, ModelError
from edgeci_mqtt.graph.ops import Op, Shape, SpatialOp, is_map

__all__ = ["Graph", "Node", "Weights", "needed_regions"]

Weights = Mapping[str, NDArray[np.floating]]
"""A graph's weights and constants by name (float32 or float64 arrays)."""


@dataclass(frozen=True)
class Node:
    """One op applied to named tensors (graph inputs, weights or other nodes' outputs)."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    output: str


@dataclass(frozen=True)
class Graph:
    """``nodes`` in dependency order from the ``input`` map to the ``outputs``.

    ``shapes`` holds every tensor's shape, weights included (their arrays are kept
    apart, :data:`Weights`), so geometry and pricing never need the arrays.
    """

    name: str
    input: str
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    shapes: Mapping[str, Shape]
    weight_names: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if not is_map(self.shapes.get(self.input, ())):
            raise ModelError(f"{self.name}: input {self.input!r} is not a (1, C, H, W) map")
        defined = {self.input} | set(self.weight_names)
        for node in self.nodes:
            low, high = node.op.arity
            if not low <= len(node.inputs) <= high:
                raise ModelError(f"{self.name}: node {node.name} ({node.op.kind}) takes {low}-{high} operands")
            missing = [t for t in node.inputs if t not in defined]
            if missing:
                raise ModelError(f"{self.name}: node {node.name} reads {missing[0]!r} before it is defined")
            absent = [w for w in node.op.weights() if w not in self.weight_names]
            if absent:
                raise ModelError(f"{self.name}: node {node.name} has no weight {absent[0]!r}")
            if node.output in defined:
                raise ModelError(f"{self.name}: tensor {node.output!r} is defined twice")
            inferred = node.op.infer([self.shapes[t] for t in node.inputs])
            if self.shapes.get(node.output) != inferred:
                raise ModelError(
                    f"{self.name}: node {node.name} ({node.op.kind}) computes {list(inferred)}, "
                    f"the graph says {list(self.shapes.get(node.output, ()))}"
                )
            if node.op.spatial and any(t not in self.weight_names and not self.is_map(t) for t in node.inputs):
                raise ModelError(f"{self.name}: node {node.name} ({node.op.kind}) needs maps, after the tail began")
            if not node.op.spatial and any(t in self.weight_names for t in node.inputs):
                raise ModelError(f"{self.name}: tail node {node.name} ({node.op.kind}) reads a constant operand")
            defined.add(node.output)
        missing = [t for t in self.outputs if t not in defined]
        if not self.outputs or missing:
            raise ModelError(f"{self.name}: output {missing[0] if missing else '(none)'!r} is not computed")

    def is_map(self, tensor: str) -> bool:
        """Whether ``tensor`` is a map computed from the input (not a weight, not the tail)."""
        return tensor not in self.weight_names and is_map(self.shapes[tensor]) and tensor in self._spatial

    @cached_property
    def _spatial(self) -> frozenset[str]:
        maps = {self.input}
        for node in self.nodes:
            if node.op.spatial:
                maps.add(node.output)
        return frozenset(maps)

    @cached_property
    def producer(self) -> Mapping[str, Node]:
        return {node.output: node for node in self.nodes}

    @cached_property
    def users(self) -> Mapping[str, tuple[Node, ...]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for t in dict.fromkeys(node.inputs):
                users.setdefault(t, []).append(node)
        return {t: tuple(n) for t, n in users.items()}

    @property
    def input_shape(self) -> Shape:
        return self.shapes[self.input]

    def spatial_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.op.spatial)

    def tail_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if not n.op.spatial)


def _whole(shape: Shape) -> TileRegion:
    return TileRegion.whole(shape[2], shape[3])


def needed_regions(
    graph: Graph, wanted: Mapping[str, TileRegion], nodes: Iterable[Node] | None = None
) -> dict[str, TileRegion]:
    """The region of every map that computing ``wanted`` (regions of some maps) reads.

    Walked back through ``nodes`` (default: every spatial node) in reverse order: a
    node's output region is the hull of what its users need, and each map operand
    needs what the op's axes say of that region. The result holds ``wanted`` and every
    map the walk reached (weights are whole and not listed).
    """
    regions = dict(wanted)
    for tensor, region in wanted.items():
        shape = graph.shapes[tensor]
        if not _whole(shape).contains(region) or region.area == 0:
            raise GeometryError(f"{graph.name}: region {region} of {tensor!r} is empty or outside its {shape[2:]} map")
    walk: Sequence[Node] = tuple(graph.spatial_nodes() if nodes is None else nodes)
    for node in reversed(walk):
        out = regions.get(node.output)
        if out is None:
            continue
        op = node.op
        assert isinstance(op, SpatialOp)
        shapes = [graph.shapes[t] for t in node.inputs]
        for tensor, shape, (rows, cols) in zip(node.inputs, shapes, op.axes(shapes), strict=True):
            if tensor in graph.weight_names:
                continue
            need = TileRegion(rows.needed(out.rows, shape[2]), cols.needed(out.cols, shape[3]))
            held = regions.get(tensor)
            regions[tensor] = need if held is None else held.hull(need)
    return regions
