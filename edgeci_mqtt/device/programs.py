"""The device's side of a program: check it before anything of it is kept, and run a step.

A program is checked whole on arrival, so that a step can never fail on geometry later:
its steps are in block order, none before the boundary the attempt starts from; every
step's input pieces are disjoint and together are exactly the rectangle its output needs;
the rows the program carries fit their map; a piece this device is to read from itself is
made by one of its own earlier steps; every send is part of the step's output.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgeci_mqtt.core.blocks import tile_input_region
from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion
from edgeci_mqtt.device.program_state import ReadyStep, Tile, step_input_region
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.models.held import HeldModel, ModelStore
from edgeci_mqtt.wire import (
    DoneMessage,
    PackedArray,
    ProgramMessage,
    ProgramStep,
    RowsMessage,
    TailRole,
    VectorMessage,
    WorkItem,
)

__all__ = ["ValidProgram", "outgoing", "run_step", "validate_program"]


@dataclass(frozen=True)
class ValidProgram:
    message: ProgramMessage
    held: HeldModel
    shapes: list[FeatureShape]


def _check_step(
    step: ProgramStep, index: int, message: ProgramMessage, device: str, held: HeldModel, shapes: list[FeatureShape]
) -> None:
    where = f"program {message.request} step {index}"
    block = step.block
    out_shape = shapes[block.stop]
    if not TileRegion.whole(out_shape.height, out_shape.width).contains(step.out_region):
        raise WireError(f"{where}: out_region {step.out_region} is outside the {out_shape} output")
    need = tile_input_region(held.chain.stages, shapes, block, step.out_region)
    if not step.inputs:
        raise WireError(f"{where}: no input pieces")
    hull = step_input_region(step)
    disjoint = not any(a.region.intersection(b.region) for a, b in itertools.combinations(step.inputs, 2))
    if not disjoint or sum(p.region.area for p in step.inputs) != hull.area or not hull.contains(need):
        raise WireError(f"{where}: its input pieces do not tile a rectangle covering the needed {need}")
    in_shape = shapes[block.start]
    if not TileRegion.whole(in_shape.height, in_shape.width).contains(hull):
        raise WireError(f"{where}: input {hull} is outside the {in_shape} map")
    if block.start < message.input_boundary:
        raise WireError(f"{where}: block {block} is before the attempt's start {message.input_boundary}")
    for piece in step.inputs:
        if piece.source == device and not any(
            s.block.stop == block.start and s.out_region.contains(piece.region) for s in message.steps[:index]
        ):
            raise WireError(f"{where}: no earlier step of {device} makes {piece.region}")
    for send in step.sends:
        if not step.out_region.contains(send.region) or send.to == device:
            raise WireError(f"{where}: cannot send {send.region} of {step.out_region} to {send.to}")


def _rows_bytes(held: HeldModel, rows: int) -> int:
    """Weights and biases of this many rows of the tail's first layer."""
    return rows * (held.chain.tail_parts.first.in_features + 1) * 4


def _tail_weight_bytes(message: ProgramMessage, held: HeldModel) -> int:
    """Bytes of fully connected weights the program's tail part and finish use."""
    parts = held.chain.tail_parts
    used = 0
    if message.tail is not None:
        used += _rows_bytes(held, message.tail.features.size if message.tail.features is not None else parts.features)
    if message.finish is not None or (message.tail is not None and message.tail.features is None):
        used += sum(p.numel() * p.element_size() for p in parts.rest.parameters())
    return used


def _check_tail(
    message: ProgramMessage, device: str, held: HeldModel, shapes: list[FeatureShape], budget: int | None
) -> None:
    """The tail part reads the whole final map once, and the features it or the finish
    name are within the first layer's; slices cut the features in order; the weights fit
    the budget the device announced."""
    features = held.chain.tail_parts.features
    prepare = message.prepare
    if prepare is not None:
        if held.loaded is not None:
            raise WireError(f"{device} fetches stage weights only: it makes no tail weights")
        if any(run.stop > features for run in prepare.first):
            raise WireError(f"tail rows {prepare.first} to make are beyond the first layer's {features}")
        wanted = _rows_bytes(held, sum(run.size for run in prepare.first))
        if budget is not None and wanted > budget:
            raise WireError(f"the {wanted} B of tail rows to make exceed the {budget} B {device} announced")
    if budget is not None and (message.tail is not None or message.finish is not None):
        used = _tail_weight_bytes(message, held)
        if used > budget:
            raise WireError(f"the tail's {used} B of weights exceed the {budget} B {device} announced")
    final = shapes[-1]
    if held.loaded is not None and (message.tail is not None or message.finish is not None):
        raise WireError(f"{device} fetches stage weights only: it has none for the tail")
    if message.tail is not None:
        role = message.tail
        whole = TileRegion.whole(final.height, final.width)
        disjoint = not any(a.region.intersection(b.region) for a, b in itertools.combinations(role.inputs, 2))
        if not role.inputs or not disjoint or sum(p.region.area for p in role.inputs) != whole.area:
            raise WireError(f"the tail's input pieces do not tile the {final} final map")
        if not whole.contains(step_input_region(role)):
            raise WireError(f"the tail's input pieces reach outside the {final} final map")
        for piece in role.inputs:
            if piece.source == device and not any(
                s.block.stop == len(shapes) - 1 and s.out_region.contains(piece.region) for s in message.steps
            ):
                raise WireError(f"no step of {device} makes {piece.region} of the final map")
        if role.features is not None and role.features.stop > features:
            raise WireError(f"tail features {role.features} are beyond the first layer's {features}")
    if message.finish is not None:
        slices = message.finish.slices
        stops = [0] + [s.features.stop for s in slices]
        if (
            not slices
            or any(s.features.start != stop for s, stop in zip(slices, stops, strict=False))
            or stops[-1] != features
        ):
            raise WireError(f"the slices to finish the tail do not cut its {features} features in order")
        own = message.tail.features if message.tail is not None else None
        if any(s.source == device and s.features != own for s in slices):
            raise WireError(f"{device} is to finish with a slice of its own that it does not compute")


def validate_program(
    message: ProgramMessage,
    device: str,
    models: ModelStore,
    has_weights: Callable[[HeldModel, str, str], bool],
    tail_budget: int | None = None,
) -> ValidProgram:
    """Check a program against the model it names; every inconsistency is a :class:`WireError`."""
    held = models.get(message.model)
    if held.loaded is None and message.digest != held.digest:
        raise WireError(f"program {message.request}: weights digest {message.digest} is not ours ({held.digest})")
    if not message.steps and message.tail is None and message.finish is None:
        raise WireError(f"program {message.request} has nothing to do")
    try:
        shapes = held.shapes(*message.input_hw)
        for step in message.steps:
            step.block.stages(held.chain.stages)
    except EdgeCIError as exc:
        raise WireError(f"program {message.request}: {exc}") from exc
    if any(b.block.start < a.block.stop for a, b in itertools.pairwise(message.steps)):
        raise WireError(f"program {message.request}: steps are not in block order")
    if (message.input is None) != (message.input_region is None):
        raise WireError(f"program {message.request}: rows carried need their region and a region its rows")
    if message.input is not None and message.input_region is not None:
        if message.input_boundary >= len(shapes):
            raise WireError(f"program {message.request}: boundary {message.input_boundary} is beyond the model")
        shape, region = shapes[message.input_boundary], message.input_region
        if not TileRegion.whole(shape.height, shape.width).contains(region):
            raise WireError(f"program {message.request}: the rows carried, {region}, are outside the {shape} map")
        expected = (1, shape.channels, region.height, region.width)
        if message.input.shape != expected or message.input.dtype != np.float32:
            raise WireError(
                f"program {message.request}: rows carried are {message.input.dtype}{list(message.input.shape)},"
                f" not {expected}"
            )
    for index, step in enumerate(message.steps):
        try:
            _check_step(step, index, message, device, held, shapes)
        except EdgeCIError as exc:
            raise WireError(str(exc)) from exc
    try:
        _check_tail(message, device, held, shapes, tail_budget)
    except EdgeCIError as exc:
        raise WireError(f"program {message.request}: {exc}") from exc
    if held.loaded is not None:
        for step in message.steps:
            for stage in held.weighted_stages(step.block):
                if not has_weights(held, message.digest, stage):
                    raise WireError(f"program {message.request}: weights of stage {stage} are not here")
    return ValidProgram(message, held, shapes)


def run_step(ready: ReadyStep[ValidProgram]) -> Tile:
    """Compute one work item from its assembled input: a block's output tile, the tail's
    part (a slice of the first layer, or the logits), or the tail's finish (the logits)."""
    item, program = ready.item, ready.context
    tile = torch.from_numpy(ready.tile)
    parts = program.held.chain.tail_parts
    with torch.inference_mode():
        if isinstance(item, ProgramStep):
            out = run_block_tile(
                program.held.chain.kernels, program.shapes, item.block, tile, step_input_region(item), item.out_region
            )
        elif isinstance(item, TailRole) and item.features is not None:
            out = program.held.tail_part(tile, item.features)
        elif isinstance(item, TailRole):
            out = program.held.tail_whole(tile)
        else:
            program.held.make_rest()
            out = parts.finish(tile)
    return out.contiguous().numpy()


def outgoing(
    message: ProgramMessage, item: WorkItem, output: Tile, me: str, codec: Callable[[Tile], str]
) -> list[tuple[str, RowsMessage | VectorMessage | DoneMessage]]:
    """Where a work item's output goes, as (recipient, message): a block's rows to the
    devices (or the orchestrator) the program names (and, behind a barrier, word to the
    orchestrator that the step is done), a tail slice to the finisher (nothing when that is
    us: the store keeps it), logits to the orchestrator. ``codec`` picks how each array
    travels (raw when the program says so)."""

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
