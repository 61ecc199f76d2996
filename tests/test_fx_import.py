"""PyTorch modules traced with torch.fx into graphs: faithful to the module, and the same
graph an ONNX export of the module reads into."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.exactness import faithful, float64_model
from edgeci_mqtt.graph.fx_reader import read_module
from edgeci_mqtt.graph.graph import Graph
from edgeci_mqtt.graph.onnx_reader import read_onnx
from edgeci_mqtt.graph.run import graph_params, run_graph
from edgeci_mqtt.models import build_model
from tests.onnx_models import DarknetReorg, TinySegmenter, export

pytestmark = pytest.mark.pure


def _faithful(module: nn.Module, graph: Graph, weights: dict, size: tuple[int, int]) -> None:
    torch.manual_seed(5)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ref32, ref64 = module(x), float64_model(module)(x.double())
    ours = run_graph(graph, graph_params(weights), x)[graph.outputs[0]]
    assert faithful(ours, ref32, ref64)


@pytest.mark.parametrize(
    ("make", "size"),
    [
        (DarknetReorg, (12, 16)),
        (TinySegmenter, (18, 14)),
        (lambda: build_model("smallcnn"), (32, 32)),
        (lambda: build_model("resnet34"), (64, 48)),
    ],
    ids=["reorg", "segmenter", "smallcnn", "resnet34"],
)
def test_a_traced_module_is_faithful(make: type[nn.Module], size: tuple[int, int]) -> None:
    module = make().eval()
    graph, weights = read_module(module, size)
    assert set(weights) <= set(module.state_dict()) | {w for w in weights if ":" in w}
    _faithful(module, graph, weights, size)


@pytest.mark.slow
def test_vgg16_at_224_with_its_classifier() -> None:
    module = build_model("vgg16")
    graph, weights = read_module(module, (224, 224))
    kinds = Counter(n.op.kind for n in graph.nodes)
    assert kinds["conv"] == 13 and kinds["pool"] == 5 and kinds["gemm"] == 3 and kinds["tail-act"] == 2
    _faithful(module, graph, weights, (224, 224))


def _skeleton(graph: Graph) -> Counter[tuple[str, tuple[int, ...]]]:
    """What both importers must agree on: each sliding-window, resize and concat op with
    its output shape (an exporter may fold a batch norm into its convolution)."""
    keep = {"conv", "pool", "resize", "concat", "s2d", "global", "gemm"}
    return Counter((n.op.kind, graph.shapes[n.output]) for n in graph.nodes if n.op.kind in keep)


@pytest.mark.parametrize(
    ("make", "size"), [(DarknetReorg, (12, 16)), (TinySegmenter, (18, 14))], ids=["reorg", "segmenter"]
)
def test_traced_and_exported_graphs_agree(tmp_path: Path, make: type[nn.Module], size: tuple[int, int]) -> None:
    module = make()
    path = export(module, tmp_path / "m.onnx", size)
    traced, _ = read_module(module, size)
    read, _ = read_onnx(path)
    assert _skeleton(traced) == _skeleton(read)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return x


class _GroupNormed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class _Uneven(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


def test_what_cannot_be_traced_or_tiled_is_refused() -> None:
    with pytest.raises(ModelError, match=r"torch\.fx cannot trace it"):
        read_module(_Branchy(), (8, 8))
    with pytest.raises(ModelError, match="module GroupNorm is not supported"):
        read_module(_GroupNormed(), (8, 8))
    with pytest.raises(ModelError, match="uneven windows"):
        read_module(_Uneven(), (8, 8))


class _Functional(nn.Module):
    """PyTorch's functional forms and tensor methods, as hand-written models call them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding="same")
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.max_pool2d(self.conv(x), 3, 2, 1, ceil_mode=True)
        y = torch.nn.functional.avg_pool2d(y, 3, 1, 1, count_include_pad=False)
        y = torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest")
        y = torch.nn.functional.pad(y, (1, 0, 0, 2)) * torch.sigmoid(y.mean((2, 3), keepdim=True))
        y = torch.cat([y, torch.nn.functional.leaky_relu(y, 0.2)], dim=1)
        return self.fc(y.mean(dim=(-2, -1)))


def test_functional_calls_are_read_as_their_modules() -> None:
    module = _Functional().eval()
    graph, weights = read_module(module, (13, 11))
    kinds = Counter(n.op.kind for n in graph.nodes)
    assert kinds["pool"] == 2 and kinds["resize"] == 1 and kinds["pad"] == 1 and kinds["global"] == 2
    _faithful(module, graph, weights, (13, 11))
