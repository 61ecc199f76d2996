"""A plan: which blocks, which tiles, which device runs each, and how tiles are handed out.

Plans are plain data, produced by every strategy alike and consumed by the simulator
and the runtime, so a strategy is compared with another on exactly the same terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.work import OpWork

__all__ = ["BlockPlan", "Dispatch", "Placement", "Plan", "Task"]

Dispatch = Literal["static", "pull"]
"""``static``: every task goes to its assigned device at once; ``pull``: idle devices
fetch the next tile from a queue on the orchestrator (work stealing)."""
Placement = Literal["devices", "orchestrator"]


@dataclass(frozen=True)
class Task:
    """One output tile of a block and the input it needs.

    ``device`` is empty for pulled tiles: whoever asks first runs it. The ops a task
    runs follow from its block and region (:func:`edgeci_mqtt.planner.costs.task_work`).
    """

    device: str
    out_region: TileRegion
    in_region: TileRegion
    in_bytes: int
    out_bytes: int


@dataclass(frozen=True)
class BlockPlan:
    block: FusedBlock
    tasks: tuple[Task, ...]
    placement: Placement = "devices"
    dispatch: Dispatch = "static"

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({t.device for t in self.tasks if t.device}))


@dataclass(frozen=True)
class Plan:
    """A whole inference: spatial blocks in order, then the tail on the orchestrator.

    ``predicted_s`` is the planner's own estimate (the simulator's replay may differ).
    ``auctioned``: at run time the devices bid for each block's rows (AWAS) and the
    award replaces the planned tasks, which are then what the planner expects it to be.
    """

    strategy: str
    model: str
    input_shape: FeatureShape
    blocks: tuple[BlockPlan, ...]
    tail_work: tuple[OpWork, ...]
    predicted_s: float = 0.0
    auctioned: bool = False

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({d for b in self.blocks for d in b.devices}))
