"""Stage geometry and tile execution checked against brute force and plain torch.

The needed input region of an output tile must be exactly the bounding box of the
input pixels whose change alters that tile; found here by perturbing every input
pixel of a small map. Running a stage on the needed tile must equal the plain
module's output on that region, at every border and corner. Everything runs in float64
(see tests/exactness.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from edgeci_mqtt.core.chain import chain_regions, chain_shapes
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion
from edgeci_mqtt.core.kernels import Kernel, run_chain
from edgeci_mqtt.models.resnet import BasicBlock
from edgeci_mqtt.models.stage_chain import kernel_of
from tests.exactness import assert_geometry_exact, dependency_box

pytestmark = pytest.mark.pure

CHANNELS = 2


def randomise(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand(tensor.shape, generator=gen) + 0.5
                    if "var" in str(tensor)
                    else torch.randn(tensor.shape, generator=gen)
                )
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_var is not None
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return module.double().eval()


@st.composite
def window_layers(draw: st.DrawFn, holes: bool = True) -> nn.Module:
    kind = draw(st.sampled_from(["conv", "maxpool", "avgpool"]))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    if holes:
        s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    else:  # every input index between two read ones is read too
        s = (draw(st.integers(1, k[0])), draw(st.integers(1, k[1])))
        d = (1, 1)
    if kind == "conv":
        p = (draw(st.integers(0, d[0] * (k[0] - 1))), draw(st.integers(0, d[1] * (k[1] - 1))))
        return nn.Conv2d(CHANNELS, CHANNELS, k, s, p, d, bias=draw(st.booleans()))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    if kind == "maxpool":
        return nn.MaxPool2d(k, s, p, d, ceil_mode=draw(st.booleans()))
    return nn.AvgPool2d(k, s, p, ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()))


@st.composite
def sub_region(draw: st.DrawFn, shape: FeatureShape) -> TileRegion:
    y0 = draw(st.integers(0, shape.height - 1))
    x0 = draw(st.integers(0, shape.width - 1))
    return TileRegion.of(y0, draw(st.integers(y0 + 1, shape.height)), x0, draw(st.integers(x0 + 1, shape.width)))


def check_chain(data: st.DataObject, layers: Sequence[nn.Module], kernels: Sequence[Kernel], h: int, w: int) -> None:
    """Brute-force region and exact tile output for one random output region."""
    stages = [k.stage for k in kernels]
    seed = data.draw(st.integers(0, 2**16))
    x = torch.randn(1, CHANNELS, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    shapes = chain_shapes(stages, FeatureShape(CHANNELS, h, w))
    out = data.draw(sub_region(shapes[-1]))
    full = nn.Sequential(*layers)
    with torch.no_grad():
        need = chain_regions(stages, shapes, out)[0]
        box = dependency_box(full, x, out)
        assert need == box if box is not None else need.area == 0  # None: only padding is read
        expected = full(x)[:, :, out.rows.start : out.rows.stop, out.cols.start : out.cols.stop]
        tile = x[:, :, need.rows.start : need.rows.stop, need.cols.start : need.cols.stop]
        assert_geometry_exact(run_chain(kernels, shapes[0], tile, need, out), expected, f"tile {need} -> {out}")
        whole = TileRegion.whole(h, w)
        assert_geometry_exact(run_chain(kernels, shapes[0], x, whole, out), expected, f"whole map -> {out}")


def sized(layers: Sequence[nn.Module], h: int, w: int) -> list[Kernel] | None:
    kernels = [kernel_of(f"s{i}", m) for i, m in enumerate(layers)]
    shape = FeatureShape(CHANNELS, h, w)
    for kernel in kernels:
        shape = kernel.stage.output_shape(shape)
        if shape.height < 1 or shape.width < 1:
            return None
    return kernels


@settings(max_examples=300, deadline=None)
@given(layer=window_layers(), h=st.integers(1, 11), w=st.integers(1, 11), seed=st.integers(0, 999), data=st.data())
def test_single_stage_region_is_exact_and_tile_matches_torch(
    layer: nn.Module, h: int, w: int, seed: int, data: st.DataObject
) -> None:
    layer = randomise(layer, seed)
    stages = sized([layer], h, w)
    assume(stages is not None)  # else the map is too small for this window
    assert stages is not None
    check_chain(data, [layer], stages, h, w)


@settings(max_examples=150, deadline=None)
@given(
    layers=st.lists(window_layers(holes=False), min_size=2, max_size=3),
    h=st.integers(3, 12),
    w=st.integers(3, 12),
    seed=st.integers(0, 999),
    data=st.data(),
)
def test_stage_chain_region_is_exact_and_tiles_match_torch(
    layers: list[nn.Module], h: int, w: int, seed: int, data: st.DataObject
) -> None:
    layers = [randomise(m, seed + i) for i, m in enumerate(layers)]
    with_relu = [layers[0], nn.ReLU(), *layers[1:]]
    stages = sized(with_relu, h, w)
    assume(stages is not None)
    assert stages is not None
    check_chain(data, with_relu, stages, h, w)


@settings(max_examples=60, deadline=None)
@given(
    stride=st.sampled_from([1, 2]),
    widen=st.booleans(),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 999),
    data=st.data(),
)
def test_residual_block_region_is_exact_and_tile_matches_torch(
    stride: int, widen: bool, h: int, w: int, seed: int, data: st.DataObject
) -> None:
    """``widen`` adds a 1x1 downsample shortcut even at stride 1."""
    block = randomise(BasicBlock(CHANNELS, CHANNELS + int(widen), stride), seed)
    kernel = kernel_of("block", block)
    check_chain(data, [block], [kernel], h, w)
    stage = kernel.stage
    in_shape = FeatureShape(CHANNELS, h, w)
    out_shape = stage.output_shape(in_shape)
    out = data.draw(sub_region(out_shape))
    rows, cols = stage.windows  # the composed geometry describes the same region
    assert stage.input_region(out, in_shape) == TileRegion(rows.needed(out.rows, h), cols.needed(out.cols, w))


def test_dilated_border_tile_skips_unread_pixels() -> None:
    """k3 d2 p3: output 0 reads -3, -1, 1 -- only pixel 1 is real, so the region is [1, 2)."""
    conv = randomise(nn.Conv2d(CHANNELS, CHANNELS, 3, padding=3, dilation=2), 0)
    stage = kernel_of("c", conv).stage
    need = stage.input_region(TileRegion.of(0, 1, 0, 1), FeatureShape(CHANNELS, 8, 8))
    assert need == TileRegion(Span(1, 2), Span(1, 2))
