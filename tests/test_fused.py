"""Fused blocks cut into tiles give the same feature maps and logits as the whole model.

Geometry is checked in float64 (``chains64``), where only rounding is left; the float32
path is checked as faithful to the float64 oracle (see tests/exactness.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeci_mqtt.core.blocks import (
    FusedBlock,
    TileGrid,
    balanced_blocks,
    parse_blocks,
    tile_input_region,
)
from edgeci_mqtt.core.fused import run_fused
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.core.kernels import run_chain
from edgeci_mqtt.errors import GeometryError
from edgeci_mqtt.models import StageChain
from tests.exactness import Reference, assert_float32_faithful, assert_geometry_exact

pytestmark = pytest.mark.pure

# (model, height, width): non-square sizes other than 224 keep the search fast and
# exercise odd map sizes at every stride-2 stage.
SIZES = {"smallcnn": (37, 29), "resnet34": (75, 53), "vgg16": (70, 46)}
EXAMPLES = {"smallcnn": 40, "resnet34": 12, "vgg16": 10}


def plain_features(chain: StageChain, x: torch.Tensor) -> torch.Tensor:
    """The model's own modules applied in order: the reference for the stitched map."""
    for _, module in chain.model.spatial_layers():  # type: ignore[operator]
        x = module(x)
    return x


grids = st.one_of(
    st.just(TileGrid(1, 1)),
    st.builds(TileGrid, st.just(1), st.integers(2, 6)),  # column strips
    st.builds(TileGrid, st.integers(2, 6), st.just(1)),  # row strips
    st.builds(TileGrid, st.integers(1, 7), st.integers(1, 7)),  # uneven grids
)


@st.composite
def partitions(draw: st.DrawFn, num_stages: int) -> list[FusedBlock]:
    cuts = sorted(draw(st.sets(st.integers(1, num_stages - 1), max_size=min(6, num_stages - 1))))
    bounds = [0, *cuts, num_stages]
    return [FusedBlock(a, b) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("name", list(SIZES))
def test_random_blocks_and_grids_stitch_to_the_whole_model(chains64: dict[str, StageChain], name: str) -> None:
    chain = chains64[name]
    h, w = SIZES[name]
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shapes = chain.check_input(x)
    with torch.inference_mode():
        expected = plain_features(chain, x)
        expected_logits = chain.model(x)

    @settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True)
    @given(blocks=partitions(len(chain)), grid=grids)
    def check(blocks: list[FusedBlock], grid: TileGrid) -> None:
        with torch.inference_mode():
            got = run_fused(chain.kernels, shapes, blocks, grid, x)
            assert_geometry_exact(got, expected, f"{blocks} {grid}")
            assert_geometry_exact(chain.tail(got), expected_logits, f"logits {blocks} {grid}")

    check()


def test_one_pixel_tiles_in_every_block(chains64: dict[str, StageChain]) -> None:
    chain = chains64["smallcnn"]
    x = torch.randn(1, 3, 19, 14, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    shapes = chain.check_input(x)
    blocks = [FusedBlock(0, 4), FusedBlock(4, 7), FusedBlock(7, 12)]
    with torch.inference_mode():
        got = run_fused(chain.kernels, shapes, blocks, TileGrid(1000, 1000), x)
        assert_geometry_exact(got, plain_features(chain, x))


def test_every_tile_of_a_block_matches_the_whole_block_output(chains64: dict[str, StageChain]) -> None:
    """Each tile on its own (not only the stitched map), at every border and corner."""
    chain = chains64["resnet34"]
    x = torch.randn(1, 3, 61, 83, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    shapes = chain.check_input(x)
    block = FusedBlock(2, 9)
    with torch.inference_mode():
        block_in = run_chain(
            chain.kernels[:2],
            shapes[0],
            x,
            TileRegion.whole(61, 83),
            TileRegion.whole(shapes[2].height, shapes[2].width),
        )
        whole = run_chain(
            chain.kernels[2:9],
            shapes[2],
            block_in,
            TileRegion.whole(shapes[2].height, shapes[2].width),
            TileRegion.whole(shapes[9].height, shapes[9].width),
        )
        for region in TileGrid(3, 4).regions(shapes[9]):
            need = tile_input_region(chain.stages, shapes, block, region)
            tile = block_in[:, :, need.rows.start : need.rows.stop, need.cols.start : need.cols.stop]
            got = run_chain(chain.kernels[2:9], shapes[2], tile, need, region)
            want = whole[:, :, region.rows.start : region.rows.stop, region.cols.start : region.cols.stop]
            assert_geometry_exact(got, want, region)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "blocks"),
    [("vgg16", "0-10,10-23,23-31"), ("resnet34", "0-4,4-11,11-20")],
)
def test_full_size_models_with_3x3_tiles(
    chains: dict[str, StageChain],
    chains64: dict[str, StageChain],
    references: dict[tuple[str, int, int], Reference],
    name: str,
    blocks: str,
) -> None:
    """Exact in float64; in float32, as the runtime runs it, as good as the float32 model."""
    chain, chain64, ref = chains[name], chains64[name], references[name, 224, 224]
    shapes = chain.check_input(ref.x)
    fused = parse_blocks(blocks, len(chain))
    with torch.inference_mode():
        got64 = chain64.tail(run_fused(chain64.kernels, shapes, fused, TileGrid(3, 3), ref.x.double()))
        assert_geometry_exact(got64, ref.logits64)
        got32 = chain.tail(run_fused(chain.kernels, shapes, fused, TileGrid(3, 3), ref.x))
        assert_float32_faithful(got32, ref.logits32, ref.logits64)


def test_balanced_blocks_cover_the_chain(chains: dict[str, StageChain]) -> None:
    chain = chains["resnet34"]
    shapes = chain.shapes(224, 224)
    for count in (1, 2, 3, 7, 20, 50):
        blocks = balanced_blocks(chain.stages, shapes, count)
        assert len(blocks) == min(count, len(chain))
        assert blocks[0].start == 0 and blocks[-1].stop == len(chain)
        assert all(a.stop == b.start for a, b in itertools.pairwise(blocks))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0-10,11-31", "should start at stage 10"),
        ("0-10,10-30", "end at stage 30"),
        ("0-40", "past the last stage|end at stage 40"),
        ("5-5", "empty"),
        ("0-10;10-31", "START-STOP"),
        ("a-b", "START-STOP"),
    ],
)
def test_bad_block_lists_are_rejected(text: str, message: str) -> None:
    with pytest.raises(GeometryError, match=message):
        parse_blocks(text, 31)


@pytest.mark.parametrize("text", ["3", "3x", "x3", "0x2", "3x3x3", "axb"])
def test_bad_tile_grids_are_rejected(text: str) -> None:
    with pytest.raises(GeometryError):
        TileGrid.parse(text)
