"""The zoo: torchvision's layouts (parameter counts and names), traced into graphs, and every
model exact under every strategy through the one executor."""

from __future__ import annotations

import random

import pytest
import torch

from edgeci_mqtt.core.geometry import FeatureShape
from edgeci_mqtt.exactness import float64_model
from edgeci_mqtt.graph.ops import SpaceToDepth
from edgeci_mqtt.models import build_model, load_chain
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.models.zoo import ZOO
from edgeci_mqtt.planner.strategies import context_for, darknet_layers, make_plan
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy
from tests.exactness import assert_float32_faithful
from tests.executor import run_attempt
from tests.inprocess import memory_cluster
from tests.planning import device, environment

pytestmark = pytest.mark.pure

TORCHVISION = {
    "mobilenet_v2": (
        3_504_872,
        [
            "features.0.0.weight",
            "features.1.conv.0.0.weight",
            "features.2.conv.1.1.running_var",
            "features.18.0.weight",
            "classifier.1.weight",
        ],
    ),
    "mobilenet_v3_large": (
        5_483_032,
        ["features.1.block.0.0.weight", "features.4.block.2.fc1.weight", "features.16.0.weight", "classifier.3.bias"],
    ),
    "efficientnet_b0": (
        5_288_548,
        [
            "features.1.0.block.1.fc2.weight",
            "features.6.3.block.3.1.weight",
            "features.8.1.running_mean",
            "classifier.1.weight",
        ],
    ),
    "resnet18": (11_689_512, ["layer2.0.downsample.0.weight", "layer4.1.bn2.weight", "fc.bias"]),
    "resnet50": (25_557_032, ["layer1.0.conv3.weight", "layer4.2.bn3.running_var", "fc.weight"]),
    "regnet_y_400mf": (
        4_344_144,
        [
            "stem.0.weight",
            "trunk_output.block1.block1-0.proj.0.weight",
            "trunk_output.block4.block4-5.f.se.fc1.weight",
            "trunk_output.block3.block3-2.f.c.1.bias",
            "fc.weight",
        ],
    ),
}
"""Parameter counts torchvision publishes for its models, and some of its state_dict keys."""


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_layout(name: str) -> None:
    module = ZOO[name]()
    count, keys = TORCHVISION[name]
    assert sum(p.numel() for p in module.parameters()) == count
    assert set(keys) <= set(module.state_dict())


def test_yolov2_at_608_is_darknets() -> None:
    """The raw region map at 1/32 of the input; Darknet's reorg read as a space-to-depth; the
    passthrough span (from layer 16's map to the concatenation) one stage; DeepThings' 16
    fused layers (0-15) end on a 38x38 map, as in its paper."""
    chain = load_chain("yolov2")
    spec = chain.spec(608, 608)
    assert spec.shapes[-1] == FeatureShape(425, 19, 19) and chain.output_size == 425 * 19 * 19
    assert chain.tail_parts is None and spec.tail_work == ()
    nodes = [n for s in chain.stages for n in s.graph.nodes]  # type: ignore[attr-defined]
    assert sum(isinstance(n.op, SpaceToDepth) for n in nodes) == 1
    layers = darknet_layers(chain.stages)  # the passthrough's 1x1 convolution is off the longest path
    assert layers[-1] == 27 and spec.shapes[layers.index(16) + 1] == FeatureShape(256, 38, 38)
    assert max(len(s.graph.nodes) for s in chain.stages) > 20  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore(dict.fromkeys(ZOO), seed=0, size=64)


@pytest.mark.parametrize("name", list(ZOO))
def test_every_strategy_is_faithful_through_the_executor(store: ModelStore, name: str) -> None:
    module = build_model(name)
    torch.manual_seed(7)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref32, ref64 = module(x), float64_model(module)(x.double())
    spec = store.get(name).chain.spec(64, 64)
    env = environment(device("a", 100), device("b", 60), device("c", 30, mbit=50))
    for strategy in STRATEGY_NAMES:
        plan = make_plan(Strategy.parse(strategy), context_for(spec, env))
        logits = run_attempt(plan, store, x, random.Random(strategy))
        assert_float32_faithful(logits, ref32, ref64, f"{name} {strategy}")


def test_a_cluster_serves_zoo_models_with_every_strategy() -> None:
    """The real roles over the in-memory bus: an orchestrator and three devices that hold the
    models without their tails (as devices do), every strategy, faithful."""
    names = ("mobilenet_v3_large", "regnet_y_400mf")
    store = ModelStore(dict.fromkeys(names), seed=0, size=64)
    with memory_cluster(store, devices=3) as cluster, cluster.client() as client:
        for name in names:
            module = build_model(name)
            x = torch.randn(1, 3, 64, 64)
            with torch.inference_mode():
                ref32, ref64 = module(x), float64_model(module)(x.double())
            for strategy in STRATEGY_NAMES:
                result = client.infer(x, name, strategy, timeout=120, size=64)
                assert_float32_faithful(result.logits, ref32, ref64, f"{name} {strategy}")
