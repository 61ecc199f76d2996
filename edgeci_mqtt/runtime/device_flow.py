"""The device's side of ``flow``: check a program before anything of it is kept, and run a step.

A program is checked whole on arrival, so that a step can never fail on geometry later:
its steps are in block order; every step's input pieces are disjoint and together are
exactly the rectangle its output needs; the image rows (boundary 0, from the
orchestrator) match the program's image; a piece this device is to read from itself is
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
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.runtime.flow_store import ReadyStep, Rows, step_input_region
from edgeci_mqtt.runtime.models_held import HeldModel, ModelStore
from edgeci_mqtt.wire import ProgramMessage, ProgramStep

__all__ = ["ValidProgram", "run_step", "validate_program"]


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
    for piece in step.inputs:
        if piece.source == message.orchestrator and (block.start != 0 or piece.region != message.image_region):
            raise WireError(f"{where}: only the image rows of the program come from the orchestrator")
        if piece.source == device and not any(
            s.block.stop == block.start and s.out_region.contains(piece.region) for s in message.steps[:index]
        ):
            raise WireError(f"{where}: no earlier step of {device} makes {piece.region}")
    for send in step.sends:
        if not step.out_region.contains(send.region) or send.to == device:
            raise WireError(f"{where}: cannot send {send.region} of {step.out_region} to {send.to}")


def validate_program(
    message: ProgramMessage,
    device: str,
    models: ModelStore,
    has_weights: Callable[[HeldModel, str, str], bool],
) -> ValidProgram:
    """Check a program against the model it names; every inconsistency is a :class:`WireError`."""
    held = models.get(message.model)
    if held.loaded is None and message.digest != held.digest:
        raise WireError(f"program {message.request}: weights digest {message.digest} is not ours ({held.digest})")
    if not message.steps:
        raise WireError(f"program {message.request} has no steps")
    try:
        shapes = held.shapes(*message.input_hw)
        for step in message.steps:
            step.block.stages(held.chain.stages)
    except EdgeCIError as exc:
        raise WireError(f"program {message.request}: {exc}") from exc
    if any(b.block.start < a.block.stop for a, b in itertools.pairwise(message.steps)):
        raise WireError(f"program {message.request}: steps are not in block order")
    if (message.image is None) != (message.image_region is None):
        raise WireError(f"program {message.request}: an image needs its region and a region its image")
    if message.image is not None and message.image_region is not None:
        expected = (1, shapes[0].channels, message.image_region.height, message.image_region.width)
        if message.image.shape != expected or message.image.dtype != np.float32:
            raise WireError(
                f"program {message.request}: image is {message.image.dtype}{list(message.image.shape)}, not {expected}"
            )
    for index, step in enumerate(message.steps):
        try:
            _check_step(step, index, message, device, held, shapes)
        except EdgeCIError as exc:
            raise WireError(str(exc)) from exc
    if held.loaded is not None:
        for step in message.steps:
            for stage in held.weighted_stages(step.block):
                if not has_weights(held, message.digest, stage):
                    raise WireError(f"program {message.request}: weights of stage {stage} are not here")
    return ValidProgram(message, held, shapes)


def run_step(ready: ReadyStep[ValidProgram]) -> Rows:
    """Compute one step's output tile from its assembled input."""
    step, program = ready.step, ready.context
    in_region = step_input_region(step)
    with torch.inference_mode():
        out = run_block_tile(
            program.held.chain.kernels,
            program.shapes,
            step.block,
            torch.from_numpy(ready.tile),
            in_region,
            step.out_region,
        )
    return out.contiguous().numpy()
