"""Plans as task graphs: every task names its input pieces and where its tile goes; plans whose
pieces nobody holds are refused; the in-process executor reads the graph."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from edgeci_mqtt.core.blocks import FusedBlock, tile_input_region
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.execute import run_plan
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.planner.costs import make_task
from edgeci_mqtt.planner.plan import BlockPlan, Plan, Task, TaskInput, producers
from edgeci_mqtt.planner.strategies import context_for, make_plan
from edgeci_mqtt.planner.strategy import Strategy
from edgeci_mqtt.timeline import ORCHESTRATOR
from tests.planning import device, environment

pytestmark = pytest.mark.pure


def rows(a: int, b: int) -> TileRegion:
    return TileRegion.of(a, b, 0, 4)


def piece(a: int, b: int, source: str = ORCHESTRATOR, boundary: int = 0) -> TaskInput:
    return TaskInput(boundary, rows(a, b), source)


def task(device: str, a: int, b: int, inputs: tuple[TaskInput, ...], output: str = ORCHESTRATOR) -> Task:
    return Task(device, rows(a, b), 64 * sum(p.region.area for p in inputs), 64 * 4 * (b - a), inputs, output)


def plan(*blocks: BlockPlan) -> Plan:
    return Plan(
        strategy=Strategy("flow"), model="none", input_shape=FeatureShape(16, 4, 4), blocks=blocks, tail_work=()
    )


def test_make_task_gives_a_task_fed_by_the_orchestrator_and_stitched_there(chains: dict[str, StageChain]) -> None:
    spec = chains["smallcnn"].spec(37, 29)
    block, out = FusedBlock(2, 7), TileRegion.of(1, 3, 0, 4)
    made = make_task(spec.stages, spec.shapes, block, out, "a")
    need = tile_input_region(spec.stages, spec.shapes, block, out)
    assert made.inputs == (TaskInput(2, need, ORCHESTRATOR),) and made.output == ORCHESTRATOR and made.gathered
    assert made.in_region == need and made.in_bytes == spec.shapes[2].channels * need.area * 4
    assert made.input_bytes(made.inputs[0]) == made.in_bytes


def test_a_tasks_pieces_make_up_its_input_region() -> None:
    split = task("a", 0, 2, (piece(0, 1, "a"), piece(1, 3, "b")))
    assert split.in_region == rows(0, 3) and not split.gathered
    assert [split.input_bytes(p) for p in split.inputs] == [256, 512]
    with pytest.raises(PlanningError, match="overlap or leave gaps"):
        task("a", 0, 2, (piece(0, 2, "a"), piece(1, 3, "b")))
    with pytest.raises(PlanningError, match="overlap or leave gaps"):
        task("a", 0, 2, (piece(0, 1, "a"), piece(2, 3, "b")))
    with pytest.raises(PlanningError, match="all of one boundary"):
        task("a", 0, 2, (piece(0, 1, "a"), piece(1, 3, "b", boundary=1)))
    with pytest.raises(PlanningError, match="all of one boundary"):
        task("a", 0, 2, ())
    with pytest.raises(PlanningError, match="empty"):
        TaskInput(0, rows(1, 1), ORCHESTRATOR)


def test_blocks_read_their_own_boundary_and_pulled_or_gateway_tiles_stay_with_the_orchestrator() -> None:
    with pytest.raises(PlanningError, match="reads boundary 0"):
        BlockPlan(FusedBlock(1, 2), (task("a", 0, 4, (piece(0, 4),)),))
    kept = task("", 0, 4, (piece(0, 4),), output="a")
    for dispatch, placement in (("pull", "devices"), ("static", "orchestrator")):
        with pytest.raises(PlanningError, match="pulled or orchestrator tasks"):
            BlockPlan(FusedBlock(0, 1), (kept,), placement=placement, dispatch=dispatch)  # type: ignore[arg-type]


def test_every_piece_must_be_held_by_its_source() -> None:
    first = BlockPlan(FusedBlock(0, 1), (task("a", 0, 2, (piece(0, 2),), "a"), task("b", 2, 4, (piece(2, 4),), "b")))
    fed = BlockPlan(FusedBlock(1, 2), (task("a", 0, 4, (piece(0, 2, "a", 1), piece(2, 4, "b", 1))),))
    whole = plan(first, fed)
    assert producers(first, fed.tasks[0].inputs[1]) == (1,)
    assert whole.devices == ("a", "b")
    wrong = BlockPlan(FusedBlock(1, 2), (task("a", 0, 4, (piece(0, 3, "a", 1), piece(3, 4, "b", 1))),))
    with pytest.raises(PlanningError, match="a does not hold"):
        plan(first, wrong)
    with pytest.raises(PlanningError, match="does not hold"):  # the image is on the orchestrator only
        plan(BlockPlan(FusedBlock(0, 1), (task("a", 0, 4, (piece(0, 4, "a"),)),)))
    orchestrated = BlockPlan(FusedBlock(1, 2), (task("a", 0, 4, (piece(0, 4, boundary=1),)),))
    with pytest.raises(PlanningError, match="from the orchestrator, which does not hold it"):
        plan(first, orchestrated)
    with pytest.raises(PlanningError, match="the last block must send its tiles there"):
        plan(first)
    with pytest.raises(PlanningError, match="does not follow"):
        gap = BlockPlan(FusedBlock(2, 3), (task("a", 0, 4, (piece(0, 4, boundary=2),)),))
        plan(BlockPlan(FusedBlock(0, 1), (task("a", 0, 4, (piece(0, 4),)),)), gap)


def kept_on_devices(gathered: Plan) -> Plan:
    """The same tiles, each kept by the device that computed it: the next block's tasks fetch
    their rows from whoever holds them, and only the last block's tiles go to the orchestrator."""
    blocks: list[BlockPlan] = []
    for index, block in enumerate(gathered.blocks):
        last = index == len(gathered.blocks) - 1
        tasks = []
        for t in block.tasks:
            inputs = t.inputs
            if blocks:
                held = [(p.output, p.out_region.intersection(t.in_region)) for p in blocks[-1].tasks]
                inputs = tuple(TaskInput(block.block.start, part, holder) for holder, part in held if part)
            tasks.append(replace(t, inputs=inputs, output=ORCHESTRATOR if last else t.device))
        blocks.append(replace(block, tasks=tuple(tasks)))
    return replace(gathered, blocks=tuple(blocks))


def test_the_executor_fetches_every_piece_from_its_source(chains: dict[str, StageChain]) -> None:
    chain = chains["smallcnn"]
    env = environment(device("a", 30.0), device("b", 20.0), device("c", 10.0))
    ctx = context_for(chain.spec(45, 45), env)
    gathered = make_plan(Strategy.parse("modnn"), ctx)
    kept = kept_on_devices(gathered)
    assert len(kept.blocks) > 2 and not any(t.gathered for b in kept.blocks for t in b.tasks)
    assert {p.source for t in kept.blocks[1].tasks for p in t.inputs} == {"a", "b", "c"}
    x = torch.randn(1, 3, 45, 45, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        want = run_plan(gathered, chain.kernels, ctx.chain.shapes, x)
        assert torch.equal(run_plan(kept, chain.kernels, ctx.chain.shapes, x), want)
        assert torch.allclose(chain.tail(want), chain.model(x), atol=1e-4, rtol=1e-4)
