"""Regions through every graph op against brute force, and region runs equal to whole runs (float64).

For each op on a small odd-sized map: the region :func:`needed_regions` gives for an output
region is exactly the bounding box of the input pixels that change it (each pixel moved on
its own, in float64), and computing that output region from only that input region gives the
whole-map result (within 1e-10 of its largest value: a convolution may sum in another order).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from edgeci_mqtt.core.geometry import Span, TileRegion, Window
from edgeci_mqtt.errors import GeometryError, ModelError
from edgeci_mqtt.graph import ops
from edgeci_mqtt.graph.axes import COORDINATE_MODES, NEAREST_MODES, Resample
from edgeci_mqtt.graph.graph import Graph, Node, needed_regions
from edgeci_mqtt.graph.run import graph_params, run_graph, run_regions

pytestmark = pytest.mark.pure

C, H, W = 3, 9, 11


def _graph(
    op: ops.Op,
    channels: int = C,
    h: int = H,
    w: int = W,
    weights: dict[str, np.ndarray] | None = None,
    operands: tuple[str, ...] = ("x",),
) -> tuple[Graph, dict[str, np.ndarray]]:
    weights = weights or {}
    shapes = {"x": (1, channels, h, w)} | {k: tuple(v.shape) for k, v in weights.items()}
    shapes["y"] = op.infer([shapes[t] for t in operands])
    return Graph("one", "x", (Node("n", op, operands, "y"),), ("y",), shapes, frozenset(weights)), weights


def _conv(
    rng: np.random.Generator, cin: int, cout: int, groups: int = 1, k: tuple[int, int] = (3, 3), **kw: object
) -> tuple[ops.Conv, dict[str, np.ndarray]]:
    weights = {"w": rng.standard_normal((cout, cin // groups, *k)), "b": rng.standard_normal(cout)}
    return ops.Conv(weight="w", bias="b", in_channels=cin, out_channels=cout, kernel=k, groups=groups, **kw), weights  # type: ignore[arg-type]


def _ops() -> list[tuple[str, ops.Op, dict[str, np.ndarray], tuple[str, ...]]]:
    rng = np.random.default_rng(0)
    cases: list[tuple[str, ops.Op, dict[str, np.ndarray], tuple[str, ...]]] = []
    for label, kw in {
        "conv-asym-pads": dict(stride=(2, 1), pads=(0, 1, 2, 0)),
        "conv-dilated": dict(pads=(2, 1, 2, 3), dilation=(2, 3)),
        "conv-strided": dict(stride=(2, 3), pads=(1, 1, 1, 1)),
    }.items():
        op, w = _conv(rng, C, 4, **kw)  # type: ignore[arg-type]
        cases.append((label, op, w, ("x",)))
    op, w = _conv(rng, C, C, groups=C, k=(3, 5), pads=(1, 2, 1, 2))
    cases.append(("depthwise", op, w, ("x",)))
    op, w = _conv(rng, C, 5, k=(1, 1))
    cases.append(("pointwise", op, w, ("x",)))
    for label, kw in {
        "max-ceil": dict(function="max", kernel=(3, 2), stride=(2, 2), pads=(1, 0, 0, 1), ceil_mode=True),
        "max-dilated": dict(function="max", kernel=(2, 2), stride=(1, 2), pads=(1, 1, 1, 1), dilation=(2, 2)),
        "avg-count-pad": dict(function="avg", kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1), count_include_pad=True),
        "avg-ceil-asym": dict(function="avg", kernel=(3, 2), stride=(2, 3), pads=(0, 1, 1, 0), ceil_mode=True),
    }.items():
        cases.append((label, ops.Pool(**kw), {}, ("x",)))  # type: ignore[arg-type]
    cases.append(("pad", ops.Pad(pads=(2, 0, 1, 3), value=0.5), {}, ("x",)))
    bn = {k: rng.standard_normal(C) for k in ("s", "b", "m")} | {"v": rng.random(C) + 0.1}
    cases.append(("batchnorm", ops.BatchNorm(scale="s", bias="b", mean="m", var="v"), bn, ("x",)))
    for f in ("relu", "clip", "leaky_relu", "sigmoid", "hard_sigmoid", "hard_swish", "silu", "tanh"):
        cases.append((f, ops.Activation(function=f, alpha=0.2, beta=0.5, low=-0.5, high=0.7), {}, ("x",)))  # type: ignore[arg-type]
    cases.append(("gate", ops.Binary(function="mul"), {"g": rng.standard_normal((1, C, 1, 1))}, ("x", "g")))
    cases.append(("row-gate", ops.Binary(function="add"), {"g": rng.standard_normal((1, C, H, 1))}, ("x", "g")))
    cases.append(("scalar-div", ops.Binary(function="div"), {"g": np.array(1.5)}, ("x", "g")))
    cases.append(("square", ops.Binary(function="sub"), {}, ("x", "x")))
    cases.append(("concat", ops.Concat(), {}, ("x", "x")))
    cases.append(("global-mean", ops.GlobalPool(function="mean"), {}, ("x",)))
    cases.append(("global-max", ops.GlobalPool(function="max"), {}, ("x",)))
    for mode in COORDINATE_MODES:
        for size, scale in ((17, 17 / H), (20, 2.0), (4, 0.5)):
            cases.append(
                (
                    f"linear-{mode}-{size}",
                    ops.Resize(
                        rows=Resample(size, scale, "linear", mode),
                        cols=Resample(W * 2 - 1, (2 * W - 1) / W, "linear", mode),
                    ),
                    {},
                    ("x",),
                )
            )
    for rounding in NEAREST_MODES:
        for mode in ("asymmetric", "half_pixel", "tf_half_pixel_for_nn", "align_corners"):
            cases.append(
                (
                    f"nearest-{mode}-{rounding}",
                    ops.Resize(
                        rows=Resample(2 * H, 2.0, "nearest", mode, rounding),
                        cols=Resample(7, 7 / W, "nearest", mode, rounding),
                    ),
                    {},
                    ("x",),
                )
            )
    return cases


CASES = _ops()


def _brute_force(graph: Graph, params: dict[str, torch.Tensor], x: torch.Tensor, out: TileRegion) -> TileRegion | None:
    """Bounding box of the input pixels that change ``out`` when moved one at a time."""
    base = run_graph(graph, params, x)["y"]
    base = base if base.dim() == 2 else base[:, :, out.rows.start : out.rows.stop, out.cols.start : out.cols.stop]
    rows, cols = set(), set()
    _, _, h, w = x.shape
    for i, j in itertools.product(range(h), range(w)):
        moved = x.clone()
        moved[:, :, i, j] += 1000.0 + 37.0 * i + 11.0 * j
        y = run_graph(graph, params, moved)["y"]
        y = y if y.dim() == 2 else y[:, :, out.rows.start : out.rows.stop, out.cols.start : out.cols.stop]
        if not torch.equal(y, base):
            rows.add(i)
            cols.add(j)
    if not rows:
        return None
    return TileRegion.of(min(rows), max(rows) + 1, min(cols), max(cols) + 1)


def _regions(shape: tuple[int, ...], rng: random.Random, count: int) -> list[TileRegion]:
    h, w = shape[2], shape[3]
    found = [TileRegion.whole(h, w)]
    for _ in range(count):
        r0, c0 = rng.randrange(h), rng.randrange(w)
        found.append(TileRegion.of(r0, rng.randrange(r0, h) + 1, c0, rng.randrange(c0, w) + 1))
    return found


@pytest.mark.parametrize(("label", "op", "weights", "operands"), CASES, ids=[c[0] for c in CASES])
def test_needed_region_is_the_bounding_box_of_what_changes_it(
    label: str, op: ops.Op, weights: dict, operands: tuple
) -> None:
    graph, weights = _graph(op, weights=weights, operands=operands)
    params = graph_params(weights, torch.float64)
    torch.manual_seed(1)
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    rng = random.Random(label)
    for out in _regions(graph.shapes["y"], rng, 2):
        need = needed_regions(graph, {"y": out})["x"]
        truth = _brute_force(graph, params, x, out)
        if truth is None:  # every read lands in padding
            continue
        assert need == truth, f"{label}: output {out} needs {need}, brute force says {truth}"


@pytest.mark.parametrize(("label", "op", "weights", "operands"), CASES, ids=[c[0] for c in CASES])
def test_a_region_run_equals_the_whole_run(label: str, op: ops.Op, weights: dict, operands: tuple) -> None:
    graph, weights = _graph(op, weights=weights, operands=operands)
    params = graph_params(weights, torch.float64)
    torch.manual_seed(2)
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    whole = run_graph(graph, params, x)["y"]
    for out in _regions(graph.shapes["y"], random.Random(label + "run"), 8):
        need = needed_regions(graph, {"y": out})["x"]
        tile = x[:, :, need.rows.start : need.rows.stop, need.cols.start : need.cols.stop]
        part = run_regions(graph, params, tile, need, {"y": out})["y"]
        expected = whole[:, :, out.rows.start : out.rows.stop, out.cols.start : out.cols.stop]
        error = (part - expected).abs().max().item()
        assert error <= 1e-10 * whole.abs().max().item(), f"{label}: region {out} differs by {error}"


def test_resize_matches_torch_interpolate() -> None:
    """Our taps against torch's own kernels where torch has the mode (an independent check)."""
    x = torch.randn(1, 2, 7, 5, dtype=torch.float64)
    for align in (False, True):
        mode = "align_corners" if align else "pytorch_half_pixel"
        op = ops.Resize(rows=Resample(13, 13 / 7, "linear", mode), cols=Resample(12, 12 / 5, "linear", mode))
        graph, _ = _graph(op, 2, 7, 5)
        expected = torch.nn.functional.interpolate(x, size=(13, 12), mode="bilinear", align_corners=align)
        assert torch.allclose(run_graph(graph, {}, x)["y"], expected, rtol=0, atol=1e-12)
    op = ops.Resize(
        rows=Resample(14, 2.0, "nearest", "asymmetric", "floor"),
        cols=Resample(15, 3.0, "nearest", "asymmetric", "floor"),
    )
    graph, _ = _graph(op, 2, 7, 5)
    expected = torch.nn.functional.interpolate(x, scale_factor=(2.0, 3.0), mode="nearest")
    assert torch.equal(run_graph(graph, {}, x)["y"], expected)


def test_space_and_depth_round_trip() -> None:
    x = torch.randn(1, 3, 8, 6, dtype=torch.float64)
    s2d = ops.SpaceToDepth.onnx(3, 2)
    graph, _ = _graph(s2d, 3, 8, 6)
    cells = run_graph(graph, {}, x)["y"]
    assert cells.shape == (1, 12, 4, 3)
    back, _ = _graph(ops.DepthToSpace(block=2, order="DCR"), 12, 4, 3)
    assert torch.equal(run_graph(back, {}, cells)["y"], x)
    assert torch.equal(torch.nn.functional.pixel_unshuffle(x, 2)[:, [0, 4, 8]], cells[:, [0, 1, 2]])


def test_an_asymmetric_window_counts_its_end_padding() -> None:
    window = Window(3, 2, 0, padding_end=1)
    assert window.output_size(8) == 4 and Window(3, 2, 0).output_size(8) == 3
    assert Window(3, 1, 1, padding_end=1) == Window(3, 1, 1)
    assert str(window) == "k3s2p0-1"
    assert window.needed(Span(3, 4), 8) == Span(6, 8)


def test_inconsistent_graphs_are_refused() -> None:
    op, weights = _conv(np.random.default_rng(0), C, 4)
    with pytest.raises(ModelError, match="takes 3 channels"):
        _graph(op, channels=2, weights=weights)
    with pytest.raises(ModelError, match="do not broadcast"):
        ops.Binary(function="add").infer([(1, 3, 4, 4), (1, 3, 2, 4)])
    with pytest.raises(ModelError, match="different sizes"):
        ops.Concat().infer([(1, 3, 4, 4), (1, 3, 4, 5)])
    shapes = {"x": (1, 3, 4, 4), "y": (1, 3, 4, 5)}
    with pytest.raises(ModelError, match="computes"):
        Graph("g", "x", (Node("n", ops.Activation(function="relu"), ("x",), "y"),), ("y",), shapes)
    with pytest.raises(ModelError, match="before it is defined"):
        Graph("g", "x", (Node("n", ops.Activation(function="relu"), ("z",), "y"),), ("y",), shapes)
    graph, _ = _graph(ops.Activation(function="relu"))
    with pytest.raises(GeometryError):
        needed_regions(graph, {"y": TileRegion.of(0, H + 1, 0, 1)})
