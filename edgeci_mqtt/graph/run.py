"""Run a graph with torch: the whole model, or regions of its maps from a region of its input.

This is the reference every split run is checked against, and the one executor a tile
of a graph stage goes through: a region run walks the needed regions back
(:func:`~edgeci_mqtt.graph.graph.needed_regions`) and computes each map only there.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.errors import InputError
from edgeci_mqtt.graph.graph import Graph, Weights, needed_regions
from edgeci_mqtt.graph.ops import SpatialOp
from edgeci_mqtt.graph.torch_ops import run_spatial, run_tail

__all__ = ["graph_params", "run_graph", "run_regions"]


def graph_params(weights: Weights, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The weights as torch tensors of ``dtype`` (float64 for an oracle)."""
    return {name: torch.tensor(array, dtype=dtype) for name, array in weights.items()}


def run_regions(
    graph: Graph, params: Mapping[str, Tensor], x: Tensor, held: TileRegion, wanted: Mapping[str, TileRegion]
) -> dict[str, Tensor]:
    """Regions ``wanted`` of some maps, from ``x`` holding region ``held`` of the input."""
    regions = needed_regions(graph, wanted)
    need = regions.get(graph.input)
    if need is not None and not held.contains(need):
        raise InputError(f"{graph.name}: the input holds {held}, computing the regions asked needs {need}")
    values: dict[str, tuple[Tensor, TileRegion]] = {graph.input: (x, held)}
    for node in graph.spatial_nodes():
        out = regions.get(node.output)
        if out is None:
            continue
        op = node.op
        assert isinstance(op, SpatialOp)
        operands: list[Tensor] = []
        holds: list[TileRegion | None] = []
        for t in node.inputs:
            if t in graph.weight_names:
                operands.append(params[t])
                holds.append(None)
            else:
                value, region = values[t]
                operands.append(value)
                holds.append(region)
        shapes = [graph.shapes[t] for t in node.inputs]
        values[node.output] = (run_spatial(op, operands, holds, shapes, out, params), out)
    return {t: values[t][0] for t in wanted}


def run_graph(graph: Graph, params: Mapping[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """Every output of the model for one whole input ``x`` (1, C, H, W)."""
    if tuple(x.shape) != graph.input_shape:
        raise InputError(f"{graph.name}: takes an input of shape {list(graph.input_shape)}, got {list(x.shape)}")
    maps = [t for t in graph.shapes if graph.is_map(t)]
    whole = {
        t: TileRegion.whole(graph.shapes[t][2], graph.shapes[t][3])
        for t in maps
        if graph.users.get(t) or t in graph.outputs
    }
    values: dict[str, Tensor] = run_regions(graph, params, x, whole[graph.input], whole)
    for node in graph.tail_nodes():
        values[node.output] = run_tail(node.op, values[node.inputs[0]], params)
    return {t: values[t] for t in graph.outputs}
