"""The device's side of a program: check it before anything of it is kept, and run a step.

A program is checked whole on arrival, so that a step can never fail on geometry later:
its steps are in block order, none before the boundary the attempt starts from; every
step's input pieces are disjoint and together are exactly the rectangle its output needs;
the rows the program carries fit their map; a piece this device is to read from itself is
made by one of its own earlier steps; every send is part of the step's output.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import reduce
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray

from edgeci_mqtt.core.blocks import FusedBlock, tile_input_region
from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.models.held import HeldModel, ModelStore
from edgeci_mqtt.wire import DoneMessage, PackedArray, RowsMessage, VectorMessage
from edgeci_mqtt.wire.programs import ProgramMessage, ProgramStep, TailRole, WorkItem

__all__ = ["ReadyStep", "Tile", "ValidProgram", "geometry", "input_hull", "outgoing", "run_step", "validate_program"]

C = TypeVar("C")

MAX_CUT = 3
"""Steps one block may come in on one device: whole, or its interior and its two edges
(:mod:`edgeci_mqtt.planner.overlap`); bounded, so checking a program stays linear in its steps."""

Tile = NDArray[Any]
"""Part of a map (a region's values, batch x channels x rows x columns)."""


def input_hull(step: ProgramStep | TailRole) -> TileRegion:
    """The rectangle a step's (or the tail's) input pieces make up together."""
    return reduce(TileRegion.hull, (p.region for p in step.inputs))


@dataclass(frozen=True)
class ReadyStep(Generic[C]):
    """A work item whose inputs are all here: ``tile`` is its input assembled (a block's
    input rectangle, the whole final map for the tail, the first layer's output to finish)."""

    request: str
    index: int
    item: WorkItem
    tile: Tile
    context: C  # what the device keeps with the program (its model and shapes)


@dataclass(frozen=True)
class ValidProgram:
    message: ProgramMessage
    held: HeldModel
    shapes: list[FeatureShape]


def geometry(held: HeldModel, hw: tuple[int, int], blocks: Iterable[FusedBlock], where: str) -> list[FeatureShape]:
    """The chain's shapes for a message's input size ``hw``, checked against its blocks."""
    try:
        shapes = held.shapes(*hw)
        for block in blocks:
            block.stages(held.chain.stages)
    except EdgeCIError as exc:
        raise WireError(f"{where}: {exc}") from exc
    return shapes


def _check_inputs(
    where: str, item: ProgramStep | TailRole, need: TileRegion, shape: FeatureShape, made: list[TileRegion], device: str
) -> None:
    """Input pieces are disjoint and tile a rectangle covering ``need`` inside the map of
    ``shape``; a piece this device reads from itself is within a region it ``made``."""
    inputs = item.inputs
    if not inputs:
        raise WireError(f"{where}: no input pieces")
    hull = input_hull(item)
    disjoint = not any(a.region.intersection(b.region) for a, b in itertools.combinations(inputs, 2))
    if not disjoint or sum(p.region.area for p in inputs) != hull.area or not hull.contains(need):
        raise WireError(f"{where}: its input pieces do not tile a rectangle covering the needed {need}")
    if not TileRegion.whole(shape.height, shape.width).contains(hull):
        raise WireError(f"{where}: input {hull} is outside the {shape} map")
    for piece in inputs:
        if piece.source == device and not any(region.contains(piece.region) for region in made):
            raise WireError(f"{where}: no earlier step of {device} makes {piece.region}")


def _check_step(index: int, message: ProgramMessage, device: str, held: HeldModel, shapes: list[FeatureShape]) -> None:
    step = message.steps[index]
    where, block, out_shape = f"step {index}", step.block, shapes[step.block.stop]
    if not TileRegion.whole(out_shape.height, out_shape.width).contains(step.out_region):
        raise WireError(f"{where}: out_region {step.out_region} is outside the {out_shape} output")
    if block.start < message.input_boundary:
        raise WireError(f"{where}: block {block} is before the attempt's start {message.input_boundary}")
    need = tile_input_region(held.chain.stages, shapes, block, step.out_region)
    made = [s.out_region for s in message.steps[:index] if s.block.stop == block.start]
    _check_inputs(where, step, need, shapes[block.start], made, device)
    for send in step.sends:
        if not step.out_region.contains(send.region) or send.to == device:
            raise WireError(f"{where}: cannot send {send.region} of {step.out_region} to {send.to}")


def _check_tail(
    message: ProgramMessage, device: str, held: HeldModel, shapes: list[FeatureShape], budget: int | None
) -> None:
    """The tail part reads the whole final map once, and the features it or the finish
    name are within the first layer's; slices cut the features in order; the weights fit
    the budget the device announced."""
    parts, prepare, tail, finish = held.chain.tail_parts, message.prepare, message.tail, message.finish
    if parts is None:
        if prepare is not None or tail is not None or finish is not None:
            raise WireError(f"{held.chain.model_name} has no tail for a device: its output is a map")
        return
    row_bytes = (parts.first.in_features + 1) * 4  # weights and bias of one row of the first layer
    if held.loaded is not None and (prepare is not None or tail is not None or finish is not None):
        raise WireError(f"{device} fetches stage weights only: it has none for the tail, nor makes any")
    if prepare is not None:
        if any(run.stop > parts.features for run in prepare.first):
            raise WireError(f"tail rows {prepare.first} to make are beyond the first layer's {parts.features}")
        wanted = row_bytes * sum(run.size for run in prepare.first)
        if budget is not None and wanted > budget:
            raise WireError(f"the {wanted} B of tail rows to make exceed the {budget} B {device} announced")
    if budget is not None and (tail is not None or finish is not None):
        used = row_bytes * (0 if tail is None else parts.features if tail.features is None else tail.features.size)
        if finish is not None or (tail is not None and tail.features is None):  # the layers after the first too
            used += sum(p.numel() * p.element_size() for p in parts.rest.parameters())
        if used > budget:
            raise WireError(f"the tail's {used} B of weights exceed the {budget} B {device} announced")
    if tail is not None:
        made = [s.out_region for s in message.steps if s.block.stop == len(shapes) - 1]
        _check_inputs("the tail", tail, TileRegion.whole(shapes[-1].height, shapes[-1].width), shapes[-1], made, device)
        if tail.features is not None and tail.features.stop > parts.features:
            raise WireError(f"tail features {tail.features} are beyond the first layer's {parts.features}")
    if finish is not None:
        stops = [0] + [s.features.stop for s in finish.slices]
        in_order = all(s.features.start == stop for s, stop in zip(finish.slices, stops, strict=False))
        if not finish.slices or not in_order or stops[-1] != parts.features:
            raise WireError(f"the slices to finish the tail do not cut its {parts.features} features in order")
        own = tail.features if tail is not None else None
        if any(s.source == device and s.features != own for s in finish.slices):
            raise WireError(f"{device} is to finish with a slice of its own that it does not compute")


def validate_program(
    message: ProgramMessage,
    device: str,
    models: ModelStore,
    has_weights: Callable[[HeldModel, str, str], bool],
    tail_budget: int | None = None,
) -> ValidProgram:
    """Check a program against the model it names; every inconsistency is a :class:`WireError`."""
    held, where = models.get(message.model), f"program {message.request}"
    if held.loaded is None and message.digest != held.digest:
        raise WireError(f"{where}: weights digest {message.digest} is not ours ({held.digest})")
    if not message.steps and message.tail is None and message.finish is None:
        raise WireError(f"{where} has nothing to do")
    shapes = geometry(held, message.input_hw, (step.block for step in message.steps), where)
    if any(b.block != a.block and b.block.start < a.block.stop for a, b in itertools.pairwise(message.steps)):
        raise WireError(f"{where}: steps are not in block order")
    for block, group in itertools.groupby(message.steps, key=lambda step: step.block):
        cut = list(group)  # a block's rows in one step, or cut for overlap: its interior and two edges
        if len(cut) > MAX_CUT:
            raise WireError(f"{where}: {len(cut)} steps of block {block}, more than {MAX_CUT}")
        for a, b in itertools.combinations(cut, 2):
            if a.out_region.intersection(b.out_region) is not None:
                raise WireError(f"{where}: steps of block {block} overlap in {a.out_region} and {b.out_region}")
    if (message.input is None) != (message.input_region is None):
        raise WireError(f"{where}: rows carried need their region and a region its rows")
    if message.input is not None and message.input_region is not None:
        if message.input_boundary >= len(shapes):
            raise WireError(f"{where}: boundary {message.input_boundary} is beyond the model")
        shape, region, rows = shapes[message.input_boundary], message.input_region, message.input
        if not TileRegion.whole(shape.height, shape.width).contains(region):
            raise WireError(f"{where}: the rows carried, {region}, are outside the {shape} map")
        expected = (1, shape.channels, region.height, region.width)
        if rows.shape != expected or rows.dtype != np.float32:
            raise WireError(f"{where}: rows carried are {rows.dtype}{list(rows.shape)}, not {expected}")
    try:
        for index in range(len(message.steps)):
            _check_step(index, message, device, held, shapes)
        _check_tail(message, device, held, shapes, tail_budget)
    except EdgeCIError as exc:
        raise WireError(f"{where}: {exc}") from exc
    stages = [s for step in message.steps for s in held.weighted_stages(step.block)] if held.loaded is not None else []
    for stage in stages:
        if not has_weights(held, message.digest, stage):  # books (and queues) what is on disk: stop at the first
            raise WireError(f"{where}: weights of stage {stage} are not here")
    return ValidProgram(message, held, shapes)


def run_step(ready: ReadyStep[ValidProgram]) -> Tile:
    """Compute one work item from its assembled input: a block's output tile, the tail's
    part (a slice of the first layer, or the logits), or the tail's finish (the logits)."""
    item, shapes, held = ready.item, ready.context.shapes, ready.context.held
    tile = torch.from_numpy(ready.tile)
    with torch.inference_mode():
        if isinstance(item, ProgramStep):
            out = run_block_tile(held.chain.kernels, shapes, item.block, tile, input_hull(item), item.out_region)
        elif isinstance(item, TailRole) and item.features is not None:
            out = held.tail_part(tile, item.features)
        elif isinstance(item, TailRole):
            out = held.tail_whole(tile)
        else:
            held.make_rest()
            out = held.chain.split_tail().finish(tile)
    return out.contiguous().numpy()


def outgoing(
    message: ProgramMessage, item: WorkItem, output: Tile, me: str, codec: Callable[[Tile], str]
) -> list[tuple[str, RowsMessage | VectorMessage | DoneMessage]]:
    """Where a work item's output goes, as (recipient, message): a block's rows where the
    program says (and, behind a barrier, word to the orchestrator that the step is done), a
    tail slice to the finisher (nothing when that is us: the store keeps it), logits to the
    orchestrator. ``codec`` picks how each array travels (raw when the program says so)."""

    def packed(array: Tile) -> PackedArray:
        array = np.ascontiguousarray(array)
        return PackedArray(array, codec(array) if message.compress else "raw")

    request = message.request
    if isinstance(item, ProgramStep):
        out: list[tuple[str, RowsMessage | VectorMessage | DoneMessage]] = []
        for send in item.sends:
            rows, cols = send.region.within(item.out_region)
            part = packed(output[:, :, rows, cols])
            out.append((send.to, RowsMessage(request, me, item.block.stop, send.region, part)))
        if message.barrier:
            out.append((message.orchestrator, DoneMessage(request, me, item.block.stop)))
        return out
    if isinstance(item, TailRole) and item.features is not None:
        return [] if item.to == me else [(item.to, VectorMessage(request, me, item.features, packed(output)))]
    return [(item.to, VectorMessage(request, me, Span(0, output.shape[1]), PackedArray(output), logits=True))]
