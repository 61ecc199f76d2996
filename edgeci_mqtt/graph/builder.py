"""What every importer does alike: constants, aliases, views of maps, and emitted nodes.

An importer walks its source (an ONNX file, a traced module) in order and tells a
:class:`GraphBuilder` what each step is: a constant (folded shape arithmetic, weights), an
alias (identity, dropout), a view of a map (reshapes and transposes, followed as index
arrays until something uses them) or an op. The builder keeps the shapes, decides what a
view becomes when it is used (the map itself, a space-to-depth, or tail ops) and checks
that map ops only read maps, so each importer is only its source's vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph.graph import Graph, Node
from edgeci_mqtt.graph.ops import (
    Activation,
    Op,
    Reshape,
    Shape,
    SpaceToDepth,
    TailActivation,
    TailOp,
    Transpose,
    is_map,
)

__all__ = ["MAX_TENSOR_ELEMENTS", "Array", "GraphBuilder", "block_gather"]

Array = NDArray[Any]
MAX_TENSOR_ELEMENTS = 1 << 28
"""Most elements of any tensor a graph computes (1 GiB of float32): a resize or a shape a
file asks for beyond this is refused at import, not met as a failed allocation on a device.
YOLOv2's largest map at 608x608 has 11.8 M."""


@dataclass
class _View:
    """A map seen through reshapes and transposes: ``index`` holds, for each element of the
    view, its flat index in ``source``; ``steps`` are the tail ops that make it, in order."""

    source: str
    index: Array
    steps: list[tuple[str, TailOp, str]] = field(default_factory=list)


class GraphBuilder:
    """A graph under construction, one source step at a time (see the module)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.consts: dict[str, Array] = {}
        self.shapes: dict[str, Shape] = {}
        self.nodes: list[Node] = []
        self._alias: dict[str, str] = {}
        self._views: dict[str, _View] = {}
        self._weights: dict[str, Array] = {}
        self._tail: set[str] = set()
        self._input = ""

    def set_input(self, tensor: str, shape: Shape) -> None:
        self._input, self.shapes[tensor] = tensor, shape

    def constant(self, tensor: str, array: Array) -> None:
        self.consts[tensor] = np.asarray(array)

    def const(self, tensor: str, what: str) -> Array:
        """A constant operand, or a clear error naming ``what`` it should have been."""
        if tensor not in self.consts:
            raise ModelError(f"its {what} ({tensor!r}) must be a constant at this input size")
        return self.consts[tensor]

    def alias(self, tensor: str, target: str) -> None:
        self._alias[tensor] = self.resolve(target)

    def resolve(self, tensor: str) -> str:
        while tensor in self._alias:
            tensor = self._alias[tensor]
        return tensor

    def is_map(self, tensor: str) -> bool:
        """A map computed from the input, before any tail op."""
        return tensor in self.shapes and is_map(self.shapes[tensor]) and tensor not in self._tail

    def is_viewed(self, tensor: str) -> bool:
        return tensor in self._views

    def shape_of(self, tensor: str) -> Shape:
        """The shape of any tensor: a map, a view, a tail tensor or a constant."""
        if tensor in self._views:
            return tuple(self._views[tensor].index.shape)
        if tensor in self.consts:
            return tuple(self.consts[tensor].shape)
        return self.shapes[tensor]

    def view(
        self, label: str, tensor: str, output: str, fold: Callable[[Array], Array], perm: Sequence[int] | None
    ) -> None:
        """``output`` is ``fold`` (a reshape, or the transpose ``perm``) of the map or view ``tensor``."""
        if tensor in self._views:
            base = self._views[tensor]
            view = _View(base.source, base.index, list(base.steps))
        else:
            c, h, w = self.shapes[tensor][1:]
            view = _View(tensor, np.arange(c * h * w, dtype=np.int64).reshape(1, c, h, w))
        view.index = np.asarray(fold(view.index))
        step: TailOp = Transpose(perm=tuple(perm)) if perm is not None else Reshape(shape=tuple(view.index.shape))
        view.steps.append((label, step, output))
        self._views[output] = view

    def operand(self, tensor: str, tail: bool = False) -> str:
        """``tensor`` as an op's operand: a view becomes the map it is (the same layout, or a
        space-to-depth), or, for a ``tail`` user, the tail ops that make it."""
        tensor = self.resolve(tensor)
        view = self._views.get(tensor)
        if view is None:
            return tensor
        if tail or not is_map(tuple(view.index.shape)):  # only a (1, C, H, W) view can be a map again
            return self._tail_view(tensor)
        source = self.shapes[view.source]
        if view.index.shape == source and np.array_equal(view.index.ravel(), np.arange(view.index.size)):
            return view.source
        gather = block_gather(view.index, source)
        if gather is None:
            raise ModelError(
                f"reshapes and transposes that mix the rows and columns of map {view.source!r} into "
                f"{list(view.index.shape)} cannot be tiled (only space-to-depth patterns can)"
            )
        self.emit(f"{view.steps[-1][0]}:reorg", gather, [view.source], tensor)
        del self._views[tensor]
        return tensor

    def _tail_view(self, tensor: str) -> str:
        view = self._views.pop(tensor)
        current = view.source
        for label, op, output in view.steps:
            if output not in self.shapes:
                self.emit(label, op, [current], output)
            current = output
        return current

    def emit(self, label: str, op: Op, operands: Sequence[str], output: str) -> None:
        """Add a node; constant operands and the weights the op names become graph weights.
        An activation of a tail tensor is the tail's."""
        if isinstance(op, Activation) and operands and operands[0] in self._tail:
            op = TailActivation(activation=op)
        for t in (*operands, *op.weights()):
            if t in self.consts and t not in self._weights:
                array = self.consts[t]
                if array.dtype.kind not in "fiu":
                    raise ModelError(f"constant {t!r} of type {array.dtype} cannot be a weight")
                self._weights[t] = array if array.dtype in (np.float32, np.float64) else array.astype(np.float32)
        if op.spatial:
            maps = [t for t in operands if t not in self.consts]
            bad = [t for t in maps if not self.is_map(t)]
            if bad:
                raise ModelError(
                    f"it needs maps but {bad[0]!r} has shape {list(self.shapes[bad[0]])} "
                    "(the tail already began: a map op after a flatten or a fully connected layer)"
                )
            if not maps:
                raise ModelError("all its operands are constants of a kind it cannot fold")
        shape = op.infer([self.shape_of(t) for t in operands])
        if any(d < 0 for d in shape) or math.prod(shape) > MAX_TENSOR_ELEMENTS:
            raise ModelError(f"it would make a tensor of shape {list(shape)} (at most {MAX_TENSOR_ELEMENTS} elements)")
        self.shapes[output] = shape
        if not op.spatial:
            self._tail.add(output)
        self.nodes.append(Node(label, op, tuple(operands), output))

    def output(self, tensor: str) -> str:
        """A graph output: computed from the input (a view of a map leaves as tail ops)."""
        tensor = self.resolve(tensor)
        if tensor in self._views:
            tensor = self._tail_view(tensor)
        if tensor in self.consts or tensor not in self.shapes:
            raise ModelError(f"{self.name}: output {tensor!r} is not computed from the input")
        return tensor

    def build(self, outputs: Sequence[str]) -> tuple[Graph, dict[str, Array]]:
        """The graph with these outputs (from :meth:`output`) and the weights it reads."""
        used = {w for n in self.nodes for w in (*n.op.weights(), *n.inputs) if w in self._weights}
        weights = {w: self._weights[w] for w in sorted(used)}
        shapes = dict(self.shapes) | {w: tuple(a.shape) for w, a in weights.items()}
        graph = Graph(self.name, self._input, tuple(self.nodes), tuple(outputs), shapes, frozenset(weights))
        return graph, weights


def block_gather(index: Array, source: Shape) -> SpaceToDepth | None:
    """The space-to-depth that selects ``index`` (flat positions in the ``source`` map), if any."""
    if index.ndim != 4 or index.shape[0] != 1:
        return None
    _, c, h, w = source
    _, c2, h2, w2 = index.shape
    if h2 == 0 or w2 == 0 or h % h2 or w % w2 or h // h2 != w // w2 or c2 != c * (h // h2) ** 2:
        return None
    block = h // h2
    channel, rest = np.divmod(index, h * w)
    y, x = np.divmod(rest, w)
    dy = y - np.arange(h2).reshape(1, 1, h2, 1) * block
    dx = x - np.arange(w2).reshape(1, 1, 1, w2) * block
    sources = []
    for k in range(c2):
        cell = (channel[0, k], dy[0, k], dx[0, k])
        if any(np.ptp(part) != 0 for part in cell):
            return None
        c0, y0, x0 = (int(part[0, 0]) for part in cell)
        if not (0 <= y0 < block and 0 <= x0 < block):
            return None
        sources.append((c0, y0, x0))
    return SpaceToDepth(block=block, sources=tuple(sources))
