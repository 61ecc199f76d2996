"""Where a graph may be cut into stages: the points where one map alone is alive.

A stage boundary carries one map today (the planner's chain of stages), so a cut goes
after a node whose output is then the only tensor any later node or output reads. A
straight run of layers is cut after every layer; a residual block, an inverted residual
or an Inception module is one stage (everything inside it waits for its merge); a
feature pyramid's skips keep several maps alive, so what they span is one stage until
boundaries carry several maps (docs/GRAPH.md). The tail is what follows the last cut
after which only global pooling and tail ops remain: it runs once, on the whole last map;
a model whose output is a map (a detector's raw map, a segmentation) has none.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph.graph import Graph, Node
from edgeci_mqtt.graph.ops import Activation, Binary, Concat, GlobalPool

__all__ = ["Cuts", "Segment", "cut"]


@dataclass(frozen=True)
class Segment:
    """Nodes from map ``input`` to map ``output``, nothing else alive in between."""

    input: str
    output: str
    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class Cuts:
    segments: tuple[Segment, ...]
    """The spatial stages, in order."""
    tail: tuple[Node, ...]
    """What runs on the last segment's whole output (global pooling, flatten, classifier);
    empty when the output is the last segment's map."""


def _alive_after(graph: Graph) -> list[set[str]]:
    """For each node, the tensors computed so far that something after it still reads."""
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for t in node.inputs:
            if t not in graph.weight_names:
                last[t] = i
    for t in graph.outputs:
        last[t] = len(graph.nodes)
    alive: list[set[str]] = []
    current = {graph.input} if last.get(graph.input, -1) >= 0 else set()
    for i, node in enumerate(graph.nodes):
        current = {t for t in current | {node.output} if last.get(t, -1) > i}
        alive.append(set(current))
    return alive


def _merged(segments: list[Segment], graph: Graph) -> list[Segment]:
    """An activation right after a block's merge joins the block (``relu(main + shortcut)``
    is one residual stage, as the planner has always seen it)."""
    merged: list[Segment] = []
    for segment in segments:
        last = merged[-1].nodes[-1] if merged else None
        if (
            last is not None
            and len(segment.nodes) == 1
            and isinstance(segment.nodes[0].op, Activation)
            and isinstance(last.op, Binary | Concat)
            and sum(t not in graph.weight_names for t in last.inputs) > 1
        ):
            merged[-1] = Segment(merged[-1].input, segment.output, merged[-1].nodes + segment.nodes)
        else:
            merged.append(segment)
    return merged


def cut(graph: Graph) -> Cuts:
    """The graph's stages and tail (:class:`ModelError` if it has more than one output, or
    no single-map boundary to end its spatial part at)."""
    if len(graph.outputs) != 1:
        raise ModelError(f"{graph.name}: {len(graph.outputs)} outputs; splitting serves models with one output so far")
    alive = _alive_after(graph)
    cuts = [i for i, node in enumerate(graph.nodes) if node.op.spatial and alive[i] == {node.output}]
    # The tail begins after the last cut from which only global pooling and tail ops follow.
    tail_from = len(graph.nodes)
    for i in reversed([-1, *cuts]):
        if all(isinstance(n.op, GlobalPool) or not n.op.spatial for n in graph.nodes[i + 1 :]):
            tail_from = i + 1
        else:
            break
    segments, start, current = [], 0, graph.input
    for i in [c for c in cuts if c < tail_from]:
        nodes = graph.nodes[start : i + 1]
        segments.append(Segment(current, nodes[-1].output, nodes))
        start, current = i + 1, nodes[-1].output
    segments = _merged(segments, graph)
    if start != tail_from:
        raise ModelError(f"{graph.name}: nodes {graph.nodes[start].name}.. end in no single map before the tail")
    if not segments:
        raise ModelError(f"{graph.name}: no spatial layer to split before its tail")
    return Cuts(tuple(segments), graph.nodes[tail_from:])
