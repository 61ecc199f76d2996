"""Every strategy's plan computes exactly the whole model, and follows its paper."""

from __future__ import annotations

import pytest
import torch

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.chain import ChainSpec
from edgeci_mqtt.core.geometry import FeatureShape
from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.execute import run_plan
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.planner.strategies import (
    DEEPTHINGS_GRID,
    PlanningContext,
    context_for,
    darknet_layers,
    layer_groups,
    make_plan,
    proportional_rows,
)
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy
from tests.exactness import Reference, assert_geometry_exact
from tests.planning import device, environment

pytestmark = pytest.mark.pure

SIZE = {"smallcnn": 61, "vgg16": 224, "resnet34": 224}
EXACT_SIZE = {**SIZE, "vgg16": 128}
"""Plans run in float64 at these sizes: VGG-16's 224 plans cost 17 s there; its 224 geometry is
checked in float64 by test_fused.py."""


def hetero_env():  # type: ignore[no-untyped-def]
    """Unequal devices on unequal links, like the reference hetero4 cluster."""
    return environment(
        device("jetson", 40.0, mbit=100, latency_ms=1),
        device("pi4-a", 30.0, mbit=100, latency_ms=2),
        device("pi4-b", 20.0, mbit=50, latency_ms=5),
        device("pi3", 10.0, mbit=20, latency_ms=10),
        broker_mbit=1000,
        orchestrator_gflops=25.0,
    )


@pytest.fixture(scope="module")
def contexts(chains: dict[str, StageChain]) -> dict[str, PlanningContext]:
    env = hetero_env()
    return {name: context_for(chains[name].spec(SIZE[name], SIZE[name]), env) for name in SIZE}


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize(
    "model", [pytest.param(m, marks=pytest.mark.slow) if EXACT_SIZE[m] == 224 else m for m in SIZE]
)
def test_every_plan_gives_the_whole_models_logits(
    chains64: dict[str, StageChain],
    contexts: dict[str, PlanningContext],
    references: dict[tuple[str, int, int], Reference],
    model: str,
    strategy: str,
) -> None:
    """Run in float64, where only rounding is left (tests/exactness.py)."""
    size = EXACT_SIZE[model]
    chain, ref = chains64[model], references[model, size, size]
    ctx = contexts[model] if size == SIZE[model] else context_for(chain.spec(size, size), hetero_env())
    plan = make_plan(Strategy.parse(strategy), ctx)
    with torch.inference_mode():
        logits = chain.tail(run_plan(plan, chain.kernels, ctx.chain.shapes, ref.x.double()))
        assert_geometry_exact(logits, ref.logits64, f"{model} {strategy}")
    assert plan.blocks[0].block.start == 0 and plan.blocks[-1].block.stop == len(chain)


def test_deepthings_fuses_16_layers_into_a_pulled_3x3_grid(contexts: dict[str, PlanningContext]) -> None:
    vgg = make_plan(Strategy.parse("deepthings"), contexts["vgg16"])
    fused, gateway = vgg.blocks
    # VGG-16: 12 convolutions and 4 pools are the first 16 layers, through features.26 and its ReLU
    assert darknet_layers(contexts["vgg16"].chain.stages)[26] == 16
    assert fused.block == FusedBlock(0, 28) and fused.dispatch == "pull" and len(fused.tasks) == 9
    assert {t.device for t in fused.tasks} == {""}
    assert gateway.block == FusedBlock(28, 31) and gateway.placement == "orchestrator"
    assert DEEPTHINGS_GRID.rows == DEEPTHINGS_GRID.cols == 3
    resnet = make_plan(Strategy.parse("deepthings"), contexts["resnet34"])
    assert resnet.blocks[0].block == FusedBlock(0, 11)  # stem (2 layers) + 7 blocks of 2 convolutions


def test_modnn_syncs_after_every_layer_with_rows_by_speed(contexts: dict[str, PlanningContext]) -> None:
    ctx = contexts["vgg16"]
    plan = make_plan(Strategy.parse("modnn"), ctx)
    assert [b.block for b in plan.blocks] == layer_groups(ctx.chain.stages)
    assert len(plan.blocks) == 13  # one per convolution, with its ReLU and pooling
    first = {t.device: t.out_region.rows.size for t in plan.blocks[0].tasks}
    assert set(first) == {"jetson", "pi4-a", "pi4-b", "pi3"}  # static: every device, links ignored
    speeds = ctx.estimator.speeds(plan.blocks[0].block)
    for name, rows in first.items():
        assert rows == pytest.approx(224 * speeds[name] / sum(speeds.values()), abs=1)
    assert first["jetson"] > 3 * first["pi3"]


def test_aofl_fuses_by_dp_with_rows_by_speed(contexts: dict[str, PlanningContext]) -> None:
    plan = make_plan(Strategy.parse("aofl"), contexts["vgg16"])
    assert len(plan.blocks) < 13
    for block in plan.blocks:
        assert {t.device for t in block.tasks} == {"jetson", "pi4-a", "pi4-b", "pi3"}


def test_edgeci_drops_devices_that_slow_it_down(contexts: dict[str, PlanningContext]) -> None:
    ctx = contexts["vgg16"]
    plan = make_plan(Strategy.parse("edgeci"), ctx)
    used = set(plan.devices)
    assert "jetson" in used
    sizes = {t.device: t.out_region.rows.size for t in plan.blocks[0].tasks}
    assert sizes.get("pi3", 0) <= min(sizes[d] for d in sizes if d != "pi3")


def test_replanning_after_a_device_leaves(chains: dict[str, StageChain], contexts: dict[str, PlanningContext]) -> None:
    ctx = contexts["vgg16"]
    smaller = context_for(chains["vgg16"].spec(224, 224), ctx.env.without("jetson"), ctx.costs)
    assert smaller.costs is ctx.costs  # stage prices are reused
    for strategy in STRATEGY_NAMES:
        assert "jetson" not in make_plan(Strategy(strategy), smaller).devices


def test_local_picks_the_device_that_finishes_first(contexts: dict[str, PlanningContext]) -> None:
    plan = make_plan(Strategy.parse("local"), contexts["resnet34"])
    assert plan.devices == ("jetson",) and len(plan.blocks) == 1


def test_proportional_rows() -> None:
    runs = proportional_rows(10, {"a": 2.0, "b": 1.0, "c": 1.0})
    assert [(d, s.size) for d, s in runs] == [("a", 5), ("b", 3), ("c", 2)] or [(d, s.size) for d, s in runs] == [
        ("a", 5),
        ("b", 2),
        ("c", 3),
    ]
    assert runs[0][1].start == 0 and runs[-1][1].stop == 10


def test_errors() -> None:
    with pytest.raises(PlanningError, match="unknown strategy"):
        Strategy.parse("magic")
    with pytest.raises(PlanningError, match="no devices"):
        PlanningContext(ChainSpec("m", (), (FeatureShape(3, 1, 1),), ()), environment(), None)  # type: ignore[arg-type]
