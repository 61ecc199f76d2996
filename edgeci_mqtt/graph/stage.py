"""A graph segment as a planner stage: geometry and work from the graph, no torch.

:class:`GraphStage` is what the planner, the simulator and a device validating a program
see of an imported model's stage, through the same :class:`~edgeci_mqtt.core.stages.Stage`
interface the hand-written layers have. Its regions come from walking its own sub-graph
back (:func:`~edgeci_mqtt.graph.graph.needed_regions`), so a residual, an inverted residual
or a squeeze-excitation block is exact however it is wired. The planner's vectorised row
pricing and its interiors want one sliding window per axis (:attr:`GraphStage.windows`): a
segment's is the envelope of its paths' composed windows, exact for any chain of windows
and conservative (the whole map) where a resize or a global reduction is on a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from edgeci_mqtt.core.geometry import FeatureShape, TileRegion, Window
from edgeci_mqtt.core.stages import Stage, Windows
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import GeometryError
from edgeci_mqtt.graph.cuts import Segment
from edgeci_mqtt.graph.graph import Graph, needed_regions
from edgeci_mqtt.graph.ops import Conv, Pool, SpatialOp

__all__ = ["GraphStage", "segment_graph"]


def segment_graph(graph: Graph, segment: Segment, name: str) -> Graph:
    """``segment`` of ``graph`` as a graph of its own (its input, its nodes, its one output)."""
    tensors = {segment.input} | {n.output for n in segment.nodes}
    weights = frozenset(t for n in segment.nodes for t in (*n.inputs, *n.op.weights()) if t in graph.weight_names)
    shapes = {t: graph.shapes[t] for t in tensors | weights}
    return Graph(name, segment.input, segment.nodes, (segment.output,), shapes, weights)


@dataclass(frozen=True, kw_only=True, eq=False)
class GraphStage(Stage):
    """One stage of an imported model: ``graph`` maps its input map to its output map.

    Compared by identity (two stages of two imports are different stages even when alike);
    the graph fixes the input size, and another size is refused."""

    kind: ClassVar[str] = "graph"
    graph: Graph

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    @property
    def weighted(self) -> bool:
        return any(isinstance(n.op, Conv) for n in self.graph.nodes)

    @cached_property
    def layers(self) -> int:
        """Convolutions and pools on its longest path (a residual block counts its main path)."""
        depth = {self.graph.input: 0}
        for node in self.graph.nodes:
            before = max((depth.get(t, 0) for t in node.inputs), default=0)
            depth[node.output] = before + (1 if isinstance(node.op, Conv | Pool) else 0)
        return depth[self.graph.outputs[0]]

    @property
    def in_shape(self) -> FeatureShape:
        return _feature(self.graph.shapes[self.graph.input])

    @property
    def out_shape(self) -> FeatureShape:
        return _feature(self.graph.shapes[self.graph.outputs[0]])

    def _check(self, in_shape: FeatureShape) -> None:
        if in_shape != self.in_shape:
            raise GeometryError(
                f"stage {self.name} was imported for a {self.in_shape} input, not {in_shape} "
                "(import the model at the size to run it at)"
            )

    def output_shape(self, in_shape: FeatureShape) -> FeatureShape:
        self._check(in_shape)
        return self.out_shape

    def input_region(self, out_region: TileRegion, in_shape: FeatureShape) -> TileRegion:
        self._check(in_shape)
        return needed_regions(self.graph, {self.graph.outputs[0]: out_region})[self.graph.input]

    def ops(self, out_region: TileRegion, in_shape: FeatureShape) -> list[OpWork]:
        self._check(in_shape)
        regions = needed_regions(self.graph, {self.graph.outputs[0]: out_region})
        work = []
        for node in self.graph.nodes:
            out = regions.get(node.output)
            if out is None:
                continue
            op = node.op
            assert isinstance(op, SpatialOp)
            shapes = [self.graph.shapes[t] for t in node.inputs]
            areas = [0 if t in self.graph.weight_names else regions[t].area for t in node.inputs]
            work.append(op.work(shapes, out.area, areas))
        return work

    @property
    def windows(self) -> Windows:
        return self._windows

    @cached_property
    def _windows(self) -> Windows:
        return self._window(0), self._window(1)

    def _window(self, axis: int) -> Window:
        """The sliding window this stage is along ``axis``: its one op's own, or the envelope
        of every path's composed windows (the lowest start, the farthest end). A path through
        a resize or a global reduction is priced as reading the whole map (a window cannot
        describe it; the regions stay exact)."""
        nodes = self.graph.nodes
        first = nodes[0].op
        if len(nodes) == 1 and isinstance(first, SpatialOp):
            shapes = [self.graph.shapes[t] for t in nodes[0].inputs]
            own = first.axes(shapes)[0][axis]
            if isinstance(own, Window):
                return own
        size = self.graph.input_shape[2 + axis]
        whole = Window(2 * size + 1, 1, size)
        best: dict[str, Window] = {self.graph.input: Window()}
        for node in nodes:
            op = node.op
            assert isinstance(op, SpatialOp)
            shapes = [self.graph.shapes[t] for t in node.inputs]
            paths = []
            for t, axes in zip(node.inputs, op.axes(shapes), strict=True):
                if t in self.graph.weight_names:
                    continue
                step = axes[axis]
                paths.append(best[t].then(step) if isinstance(step, Window) and best[t] is not whole else whole)
            best[node.output] = whole if whole in paths else _envelope(paths)
        return best[self.graph.outputs[0]]


def _envelope(windows: list[Window]) -> Window:
    """One window reaching from the lowest start to the farthest end of ``windows`` (equal strides)."""
    if len(windows) == 1:
        return windows[0]
    padding = max(w.padding for w in windows)
    reach = max(w.extent - w.padding for w in windows)
    return Window(reach + padding, windows[0].stride, padding)


def _feature(shape: tuple[int, ...]) -> FeatureShape:
    return FeatureShape(shape[1], shape[2], shape[3])
