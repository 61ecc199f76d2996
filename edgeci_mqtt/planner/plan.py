"""A plan as a task graph: which blocks, which tiles, who runs each, and where its data comes from and goes.

Plans are plain data, produced by every strategy alike and read by the simulator, the
in-process executor (:mod:`edgeci_mqtt.execute`) and the runtime, so a strategy is
compared with another on exactly the same terms.

The form:

* A :class:`Task` computes the output tile ``out_region`` of its block on ``device``.
* Its ``inputs`` are the pieces of the block's input map it needs, each a
  :class:`TaskInput` ``(boundary, region, source)``: the rows and columns ``region`` of
  the feature map at stage boundary ``boundary`` (always the block's start), fetched
  from ``source``, either :data:`ORCHESTRATOR` or a device by name. The pieces do not
  overlap and together make up ``in_region``, the rectangle the tile needs.
* ``output`` is who keeps the tile: the orchestrator (which stitches the block's map) or
  a device (which keeps the rows for later tasks, which then name it as their source).

Who holds what follows from that: the orchestrator holds the image (boundary 0) and the
whole map after every block that sends all its tiles to it; a device holds the tiles
sent to it. :class:`Plan` checks that every piece is held by its source and that the
last block ends on the orchestrator, where the tail runs. A consumer runs a task when its
inputs are ready, so a gather strategy's barrier is just its data dependencies.
Today every strategy gathers: one input from the orchestrator, output to it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import reduce
from typing import Literal

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.planner.strategy import Strategy
from edgeci_mqtt.planner.tail import TailPlan
from edgeci_mqtt.timeline import ORCHESTRATOR

__all__ = ["BlockPlan", "Dispatch", "Placement", "Plan", "Task", "TaskInput", "producers"]

Dispatch = Literal["static", "pull"]
"""``static``: every task goes to its assigned device once its inputs are ready; ``pull``:
idle devices fetch the next tile from a queue on the orchestrator (work stealing)."""
Placement = Literal["devices", "orchestrator"]


@dataclass(frozen=True)
class TaskInput:
    """Rows and columns ``region`` of the map at stage boundary ``boundary``, held by ``source``."""

    boundary: int
    region: TileRegion
    source: str

    def __post_init__(self) -> None:
        if self.boundary < 0 or self.region.area == 0 or not self.source:
            raise PlanningError(f"input piece {self.region} of boundary {self.boundary} from {self.source!r} is empty")


@dataclass(frozen=True)
class Task:
    """One output tile of a block, the pieces of input it needs, and who keeps the tile.

    ``device`` is empty for pulled tiles (whoever asks first runs it) and for blocks
    placed on the orchestrator. ``in_bytes`` and ``out_bytes`` are the float32 bytes of
    ``in_region`` and ``out_region``. The ops a task runs follow from its block and
    region (:class:`edgeci_mqtt.planner.costs.TaskWork`).
    """

    device: str
    out_region: TileRegion
    in_bytes: int
    out_bytes: int
    inputs: tuple[TaskInput, ...]
    output: str = ORCHESTRATOR

    def __post_init__(self) -> None:
        if not self.inputs or len({p.boundary for p in self.inputs}) != 1:
            raise PlanningError(f"task {self.out_region} needs input pieces, all of one boundary")
        overlap = any(a.region.intersection(b.region) for a, b in itertools.combinations(self.inputs, 2))
        if overlap or sum(p.region.area for p in self.inputs) != self.in_region.area:
            raise PlanningError(f"the input pieces of task {self.out_region} overlap or leave gaps")

    @property
    def in_region(self) -> TileRegion:
        """The input rectangle the tile needs: its pieces together."""
        return reduce(TileRegion.hull, (p.region for p in self.inputs))

    @property
    def gathered(self) -> bool:
        """Fed by the orchestrator and stitched there, as every strategy's tasks are today."""
        return self.output == ORCHESTRATOR and all(p.source == ORCHESTRATOR for p in self.inputs)

    def input_bytes(self, piece: TaskInput) -> int:
        """Bytes of one of this task's input pieces."""
        return self.in_bytes * piece.region.area // self.in_region.area


@dataclass(frozen=True)
class BlockPlan:
    """One block's tasks. Pulled tiles and blocks on the orchestrator are cut from the
    orchestrator's map and stitched there (their tasks are :attr:`Task.gathered`)."""

    block: FusedBlock
    tasks: tuple[Task, ...]
    placement: Placement = "devices"
    dispatch: Dispatch = "static"

    def __post_init__(self) -> None:
        for task in self.tasks:
            if task.inputs[0].boundary != self.block.start:
                raise PlanningError(
                    f"block {self.block}: task {task.out_region} reads boundary {task.inputs[0].boundary}"
                )
            if (self.placement == "orchestrator" or self.dispatch == "pull") and not task.gathered:
                raise PlanningError(f"block {self.block}: pulled or orchestrator tasks must read from and send to it")

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({t.device for t in self.tasks if t.device}))

    @property
    def gathers(self) -> bool:
        """Every tile goes to the orchestrator, which then holds the block's whole output map."""
        return all(t.output == ORCHESTRATOR for t in self.tasks)


def producers(previous: BlockPlan | None, piece: TaskInput) -> tuple[int, ...]:
    """Which tasks of ``previous`` (the block ending at the piece's boundary; None before
    the first block) make up a piece a device holds.

    Raises :class:`PlanningError` unless the tiles they keep on the piece's source cover it.
    """
    tasks = previous.tasks if previous is not None else ()
    parts = [
        (i, part)
        for i, t in enumerate(tasks)
        if t.output == piece.source and (part := t.out_region.intersection(piece.region)) is not None
    ]
    if sum(part.area for _, part in parts) != piece.region.area:
        raise PlanningError(f"{piece.source} does not hold {piece.region} of boundary {piece.boundary}")
    return tuple(i for i, _ in parts)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A whole inference: spatial blocks in order, then the tail on the orchestrator.

    ``predicted_s`` is the planner's own estimate (the simulator's replay may differ).
    ``auctioned``: at run time the devices bid for each block's rows (AWAS) and the
    award replaces the planned tasks, which are then what the planner expects it to be.
    ``tail``: where the tail runs (:mod:`edgeci_mqtt.planner.tail`); off the orchestrator,
    its readers fetch the final map's tiles from whoever holds them. ``barrier``: a block
    starts only once every device finished the one before (``flow``'s ablation);
    ``compress``: maps from devices travel compressed when that pays.
    """

    strategy: Strategy
    model: str
    input_shape: FeatureShape
    blocks: tuple[BlockPlan, ...]
    tail_work: tuple[OpWork, ...]
    predicted_s: float = 0.0
    auctioned: bool = False
    tail: TailPlan = field(default_factory=TailPlan)
    barrier: bool = False
    compress: bool = False
    densities: tuple[float, ...] = ()
    """Share of non-zero values in the map at each boundary, if measured (prices compression)."""
    overlap: bool = False
    """``flow``: steps are cut so their rows that need no halo run first (planner/overlap.py);
    the run-time award cuts its blocks so too."""
    bands: bool = False
    """``flow``: the first block's steps are cut in two bands, so a device starts on the upper
    while the image's lower rows travel (planner/overlap.py); the run-time award cuts so too."""

    def __post_init__(self) -> None:
        previous: BlockPlan | None = None
        for block_plan in self.blocks:
            start = block_plan.block.start
            if start != (previous.block.stop if previous else 0):
                raise PlanningError(f"block {block_plan.block} does not follow the block before it")
            for piece in (p for task in block_plan.tasks for p in task.inputs):
                if piece.source != ORCHESTRATOR:
                    producers(previous, piece)
                elif previous is not None and not previous.gathers:
                    raise PlanningError(
                        f"block {block_plan.block} reads boundary {start} from the orchestrator, which does not hold it"
                    )
            previous = block_plan
        if previous is not None and self.tail.on_orchestrator and not previous.gathers:
            raise PlanningError("the tail runs on the orchestrator: the last block must send its tiles there")

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({d for b in self.blocks for d in b.devices} | set(self.tail.devices)))
