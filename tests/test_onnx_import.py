"""ONNX files read into graphs and run with our kernels, checked against onnxruntime.

onnxruntime is an independent implementation of the same graph: our float32 result must be
faithful (:func:`edgeci_mqtt.exactness.faithful`) to the float64 run of the imported graph,
and onnxruntime's must be too (else our reading of the file, not our rounding, differs).
Torch-exported models are also checked against their source module in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.exactness import faithful, float64_model
from edgeci_mqtt.graph import onnx_reader
from edgeci_mqtt.graph.graph import Graph, needed_regions
from edgeci_mqtt.graph.onnx_reader import read_onnx
from edgeci_mqtt.graph.ops import SpaceToDepth
from edgeci_mqtt.graph.run import graph_params, run_graph, run_regions
from tests.onnx_models import DarknetReorg, TinySegmenter, build_ops_model, export, save

ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.pure


def _ours(graph: Graph, weights: dict, x: np.ndarray) -> tuple[dict, dict]:
    out32 = run_graph(graph, graph_params(weights), torch.from_numpy(x))
    out64 = run_graph(graph, graph_params(weights, torch.float64), torch.from_numpy(x).double())
    return out32, out64


def _check_against_module(module: torch.nn.Module, graph: Graph, weights: dict, x: np.ndarray) -> None:
    """Our float32 run of the imported graph is faithful to the source module (its float32
    attributes, such as a slope of 0.1, are what the file holds: an oracle-level difference)."""
    with torch.no_grad():
        ref32 = module(torch.from_numpy(x))
        ref64 = float64_model(module)(torch.from_numpy(x).double())
    ours = run_graph(graph, graph_params(weights), torch.from_numpy(x))[graph.outputs[0]]
    assert faithful(ours, ref32, ref64)


def _check_against_onnxruntime(path: Path, graph: Graph, weights: dict, x: np.ndarray) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    theirs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))
    out32, out64 = _ours(graph, weights, x)
    for name, tensor in zip(names, graph.outputs, strict=True):
        ref = torch.from_numpy(theirs[name])
        assert tuple(ref.shape) == tuple(out32[tensor].shape), name
        assert faithful(out32[tensor], ref, out64[tensor]), f"{name}: ours is not faithful"
        assert faithful(ref, out32[tensor], out64[tensor]), f"{name}: onnxruntime disagrees with our reading"
    return out64


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_every_op_matches_onnxruntime(tmp_path: Path, opset: int) -> None:
    path = build_ops_model(tmp_path / "ops.onnx", opset=opset)
    graph, weights = read_onnx(path)
    kinds = {node.op.kind for node in graph.nodes}
    assert kinds >= {"conv", "bn", "act", "binary", "global", "pool", "resize", "concat", "pad", "s2d", "d2s"}
    assert {"gemm", "softmax"} <= kinds
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    _check_against_onnxruntime(path, graph, weights, x)


def test_shape_subgraphs_fold_at_the_size_given(tmp_path: Path) -> None:
    path = build_ops_model(tmp_path / "dynamic.onnx", opset=18, dynamic=True)
    with pytest.raises(ModelError, match="dynamic height or width"):
        read_onnx(path)
    graph, weights = read_onnx(path, size=(16, 20))
    assert graph.input_shape == (1, 3, 16, 20)
    assert not any(node.op.kind == "reshape" for node in graph.spatial_nodes())
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 20)).astype(np.float32)
    _check_against_onnxruntime(path, graph, weights, x)


def test_darknet_reorg_becomes_space_to_depth(tmp_path: Path) -> None:
    module = DarknetReorg()
    path = export(module, tmp_path / "reorg.onnx", (12, 16))
    graph, weights = read_onnx(path)
    reorgs = [n.op for n in graph.nodes if isinstance(n.op, SpaceToDepth)]
    assert len(reorgs) == 1 and reorgs[0].block == 2
    assert all(n.op.spatial for n in graph.nodes), "the reorg left reshapes in the graph"
    x = np.random.default_rng(3).standard_normal((1, 3, 12, 16)).astype(np.float32)
    _check_against_onnxruntime(path, graph, weights, x)
    _check_against_module(module, graph, weights, x)


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_segmenter_exported_from_torch(tmp_path: Path, dynamo: bool) -> None:
    module = TinySegmenter()
    path = export(module, tmp_path / "seg.onnx", (18, 14), dynamo=dynamo)
    graph, weights = read_onnx(path)
    x = np.random.default_rng(4).standard_normal((1, 3, 18, 14)).astype(np.float32)
    _check_against_onnxruntime(path, graph, weights, x)
    _check_against_module(module, graph, weights, x)


def test_regions_of_an_imported_graph_run_exactly(tmp_path: Path) -> None:
    """Any band of the segmenter's output from only the input rows it needs (float64)."""
    graph, weights = read_onnx(export(TinySegmenter(), tmp_path / "seg.onnx", (18, 14)))
    params = graph_params(weights, torch.float64)
    x = torch.randn(1, 3, 18, 14, dtype=torch.float64)
    out = graph.outputs[0]
    whole = run_graph(graph, params, x)[out]
    # The squeeze-excitation's global pool reads the whole map: a band needs all input rows.
    assert needed_regions(graph, {out: TileRegion.of(0, 3, 0, 14)})[graph.input] == TileRegion.whole(18, 14)
    for rows in ((0, 5), (5, 11), (11, 18)):
        band = TileRegion.of(*rows, 0, 14)
        part = run_regions(graph, params, x, TileRegion.whole(18, 14), {out: band})[out]
        assert torch.allclose(part, whole[:, :, rows[0] : rows[1]], rtol=0, atol=1e-12)


# --- refusals -------------------------------------------------------------------------------


def _tiny(
    nodes: list, inits: list | None = None, out_shape: list | None = None, opset: int = 13, in_shape: list | None = None
) -> onnx.GraphProto:
    return helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape or [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits or [],
    )


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07" + bytes(range(256)) * 4)
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        read_onnx(junk)
    good = build_ops_model(tmp_path / "ops.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        read_onnx(cut)
    with pytest.raises(ModelError, match="cannot read model file"):
        read_onnx(tmp_path / "missing.onnx")


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = build_ops_model(tmp_path / "ops.onnx")
    monkeypatch.setattr(onnx_reader, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ModelError, match="larger than the 1000"):
        read_onnx(path)


def test_unsupported_ops_are_named(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="first"),
        helper.make_node("TopK", ["r", "k"], ["y", "i"], name="pick"),
    ]
    path = save(_tiny(nodes, [onnx.numpy_helper.from_array(np.array([2], np.int64), "k")]), tmp_path / "topk.onnx")
    with pytest.raises(ModelError, match=r"node 'pick' \(TopK\): unsupported op TopK: its output depends"):
        read_onnx(path)
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=1, name="soft")]
    with pytest.raises(ModelError, match="only a softmax in the tail"):
        read_onnx(save(_tiny(nodes), tmp_path / "softmax.onnx"))
    nodes = [helper.make_node("Relu", ["x"], ["y"], domain="com.example")]
    with pytest.raises(ModelError, match=r"domain 'com\.example'"):
        read_onnx(save(_tiny(nodes), tmp_path / "domain.onnx"))


def test_reshapes_that_mix_rows_are_refused(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Relu", ["t"], ["y"], name="after"),
    ]
    with pytest.raises(ModelError, match="cannot be tiled"):
        read_onnx(save(_tiny(nodes), tmp_path / "transpose.onnx"))


def test_a_declared_output_that_does_not_match_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    with pytest.raises(ModelError, match=r"declared \[1, 3, 8, 8\] but computes \[1, 3, 4, 4\]"):
        read_onnx(save(_tiny(nodes, out_shape=[1, 3, 8, 8]), tmp_path / "liar.onnx"))


def test_inconsistent_shapes_are_refused(tmp_path: Path) -> None:
    w = onnx.numpy_helper.from_array(np.zeros((4, 5, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="wrong")]
    with pytest.raises(ModelError, match=r"node 'wrong' \(Conv\): conv: takes 5 channels, got 3"):
        read_onnx(save(_tiny(nodes, [w]), tmp_path / "conv.onnx"))


def test_opsets_and_inputs_outside_the_supported_range_are_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(ModelError, match="opset 30"):
        read_onnx(save(_tiny(nodes), tmp_path / "future.onnx", opset=30))
    with pytest.raises(ModelError, match="one image"):
        read_onnx(save(_tiny(nodes, in_shape=[2, 3, 8, 8]), tmp_path / "batch.onnx"))
    with pytest.raises(ModelError, match="not 1x1"):
        read_onnx(save(_tiny(nodes), tmp_path / "fixed.onnx"), size=(1, 1))


def test_external_data_must_stay_beside_the_model(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(np.zeros(27, np.float32).tobytes())
    inner = tmp_path / "models"
    inner.mkdir()
    w = onnx.numpy_helper.from_array(np.zeros((1, 3, 3, 3), np.float32), "w")
    graph = _tiny([helper.make_node("Conv", ["x", "w"], ["y"])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "108")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(inner / "escape.onnx"))
    with pytest.raises(ModelError, match="outside the model's directory"):
        read_onnx(inner / "escape.onnx")


def test_files_that_ask_for_huge_tensors_are_refused_before_the_memory_is_taken(tmp_path: Path) -> None:
    shape = onnx.numpy_helper.from_array(np.array([1 << 40], np.int64), "huge")
    nodes = [helper.make_node("ConstantOfShape", ["huge"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])]
    with pytest.raises(ModelError, match="a constant of 1099511627776 elements"):
        read_onnx(save(_tiny(nodes, [shape]), tmp_path / "constant.onnx"))
    scales = onnx.numpy_helper.from_array(np.array([1, 1, 1e5, 1e5], np.float32), "scales")
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")]
    with pytest.raises(ModelError, match=r"a tensor of shape \[1, 3, 800000, 800000\]"):
        read_onnx(save(_tiny(nodes, [scales]), tmp_path / "resize.onnx"))
