"""Imported graphs as stage chains: cut where one map is alive, planned as the hand-written
models are, and exact under every strategy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.errors import GeometryError, InputError, ModelError
from edgeci_mqtt.exactness import faithful, float64_model
from edgeci_mqtt.execute import run_plan
from edgeci_mqtt.graph.cuts import cut
from edgeci_mqtt.graph.fx_reader import read_module
from edgeci_mqtt.graph.onnx_reader import read_onnx
from edgeci_mqtt.graph.run import graph_params, run_graph
from edgeci_mqtt.models import StageChain, build_model, load_chain, stage_chain
from edgeci_mqtt.models.graph_model import GraphModel
from edgeci_mqtt.planner.strategies import context_for, darknet_layers, layer_groups, make_plan
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy
from tests.exactness import assert_geometry_exact, float64_chain
from tests.onnx_models import TinyMobile, TinySegmenter, export
from tests.test_strategies import hetero_env

pytestmark = pytest.mark.pure


def _traced(name: str, size: int) -> StageChain:
    graph, weights = read_module(build_model(name), (size, size), name=name)
    return stage_chain(GraphModel(graph, weights), name)


@pytest.mark.parametrize(("name", "size"), [("smallcnn", 61), ("resnet34", 96)])
def test_a_traced_model_is_cut_and_planned_as_its_hand_written_chain(name: str, size: int) -> None:
    graph_chain, hand = _traced(name, size), load_chain(name)
    assert len(graph_chain) == len(hand)
    assert [s.windows for s in graph_chain.stages] == [s.windows for s in hand.stages]
    assert darknet_layers(graph_chain.stages) == darknet_layers(hand.stages)
    assert layer_groups(graph_chain.stages) == layer_groups(hand.stages)
    spec, hand_spec = graph_chain.spec(size, size), hand.spec(size, size)
    assert spec.shapes == hand_spec.shapes
    rng = random.Random(name)
    for k, (a, b) in enumerate(zip(graph_chain.stages, hand.stages, strict=True)):
        out = spec.shapes[k + 1]
        r0, c0 = rng.randrange(out.height), rng.randrange(out.width)
        region = TileRegion.of(r0, rng.randrange(r0, out.height) + 1, c0, rng.randrange(c0, out.width) + 1)
        assert a.input_region(region, spec.shapes[k]) == b.input_region(region, spec.shapes[k])
    env = hetero_env()
    ctx, hand_ctx = context_for(spec, env), context_for(hand_spec, env)
    for strategy in STRATEGY_NAMES:
        plan, hand_plan = make_plan(Strategy.parse(strategy), ctx), make_plan(Strategy.parse(strategy), hand_ctx)
        assert [b.block for b in plan.blocks] == [b.block for b in hand_plan.blocks], strategy
        assert [len(b.tasks) for b in plan.blocks] == [len(b.tasks) for b in hand_plan.blocks], strategy


def _every_strategy_exact(chain: StageChain, x: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor) -> None:
    """Every strategy's plan: geometry-exact in float64 against ``ref64``, faithful in float32."""
    chain64 = float64_chain(chain)
    ctx = context_for(chain.spec(*x.shape[2:]), hetero_env())
    for strategy in STRATEGY_NAMES:
        plan = make_plan(Strategy.parse(strategy), ctx)
        with torch.inference_mode():
            got64 = chain64.tail(run_plan(plan, chain64.kernels, ctx.chain.shapes, x.double()))
            got32 = chain.tail(run_plan(plan, chain.kernels, ctx.chain.shapes, x))
        assert_geometry_exact(got64, ref64, strategy)
        assert faithful(got32, ref32, ref64), strategy


def test_a_mobilenet_like_onnx_file_is_exact_under_every_strategy(tmp_path: Path) -> None:
    module = TinyMobile()
    graph, weights = read_onnx(export(module, tmp_path / "mobile.onnx", (40, 48)))
    chain = stage_chain(GraphModel(graph, weights), "tiny-mobile")
    # Each inverted residual with its squeeze-excitation is one stage.
    assert sum(len(s.graph.nodes) > 3 for s in chain.stages) == 3  # type: ignore[attr-defined]
    x = torch.randn(1, 3, 40, 48)
    with torch.inference_mode():
        ref32 = module(x)  # the file's attributes are float32 (a slope of 1/6): its float64 oracle is the graph's
        ref64 = run_graph(graph, graph_params(weights, torch.float64), x.double())[graph.outputs[0]]
    _every_strategy_exact(chain, x, ref32, ref64)


def test_a_traced_resnet_is_exact_under_every_strategy() -> None:
    module = build_model("resnet34")
    graph, weights = read_module(module, (64, 64), name="resnet34")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref32, ref64 = module(x), float64_model(module)(x.double())
    _every_strategy_exact(stage_chain(GraphModel(graph, weights), "resnet34"), x, ref32, ref64)


def test_a_segmenter_with_skips_across_scales_is_exact_under_every_strategy() -> None:
    """A U-Net-like model: the span its skip keeps alive is one stage (with the squeeze-excitation
    and the bilinear upsampling inside it), and its output is a map, answered as a map."""
    module = TinySegmenter().eval()
    graph, weights = read_module(module, (36, 28))
    chain = stage_chain(GraphModel(graph, weights), "segmenter")
    assert chain.tail_parts is None and chain.output_size == 4 * 36 * 28
    assert max(len(s.graph.nodes) for s in chain.stages) > 8  # type: ignore[attr-defined]
    x = torch.randn(1, 3, 36, 28)
    with torch.inference_mode():
        ref32, ref64 = module(x), float64_model(module)(x.double())
    _every_strategy_exact(chain, x, ref32, ref64)


def test_only_one_output_is_served() -> None:
    graph, _ = read_module(_TwoHeads(), (16, 16))
    with pytest.raises(ModelError, match="2 outputs"):
        cut(graph)


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, torch.relu(y)


def test_an_imported_chain_runs_only_at_its_size() -> None:
    chain = _traced("smallcnn", 32)
    with pytest.raises(InputError, match="imported for a"):
        chain.shapes(40, 40)
    with pytest.raises(GeometryError):
        chain.stages[0].input_region(TileRegion.of(0, 1, 0, 1), chain.spec(32, 32).shapes[1])
