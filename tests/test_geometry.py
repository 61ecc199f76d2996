"""Window arithmetic against PyTorch, and tiling that covers a map exactly once."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from edgeci_mqtt.core.geometry import Span, TileRegion, Window, split_span, tile_grid
from edgeci_mqtt.errors import GeometryError

pytestmark = pytest.mark.pure


@st.composite
def pool_windows(draw: st.DrawFn) -> Window:
    kernel = draw(st.integers(1, 5))
    return Window(
        kernel=kernel,
        stride=draw(st.integers(1, 4)),
        padding=draw(st.integers(0, kernel // 2)),
        dilation=draw(st.integers(1, 3)),
        ceil_mode=draw(st.booleans()),
    )


@given(window=pool_windows(), n=st.integers(1, 30))
def test_output_size_matches_torch_max_pool(window: Window, n: int) -> None:
    x = torch.zeros(1, 1, 1, n)
    try:
        expected = F.max_pool2d(
            x, (1, window.kernel), (1, window.stride), (0, window.padding), (1, window.dilation), window.ceil_mode
        ).shape[-1]
    except RuntimeError:  # torch rejects inputs too small for the window
        expected = 0
    assert window.output_size(n) == expected


@given(
    kernel=st.integers(1, 5),
    stride=st.integers(1, 4),
    padding=st.integers(0, 6),
    dilation=st.integers(1, 3),
    n=st.integers(1, 30),
)
def test_output_size_matches_torch_conv(kernel: int, stride: int, padding: int, dilation: int, n: int) -> None:
    window = Window(kernel, stride, padding, dilation)
    w = torch.zeros(1, 1, 1, kernel)
    try:
        expected = F.conv2d(torch.zeros(1, 1, 1, n), w, None, (1, stride), (0, padding), (1, dilation)).shape[-1]
    except RuntimeError:
        expected = 0
    assert window.output_size(n) == expected


@given(first=pool_windows(), second=pool_windows(), start=st.integers(0, 10), size=st.integers(1, 10))
def test_composed_window_reaches_what_the_pair_reaches(first: Window, second: Window, start: int, size: int) -> None:
    out = Span(start, start + size)
    composed = first.then(second)
    assert composed.reach(out) == first.reach(second.reach(out))


@given(
    n=st.integers(1, 60),
    parts=st.integers(1, 70),
)
def test_split_span_is_contiguous_and_near_even(n: int, parts: int) -> None:
    pieces = split_span(Span(0, n), parts)
    assert pieces[0].start == 0 and pieces[-1].stop == n
    assert all(a.stop == b.start for a, b in itertools.pairwise(pieces))
    sizes = [p.size for p in pieces]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert len(pieces) == min(parts, n)


@given(h=st.integers(1, 20), w=st.integers(1, 20), rows=st.integers(1, 25), cols=st.integers(1, 25))
def test_tile_grid_covers_every_pixel_once(h: int, w: int, rows: int, cols: int) -> None:
    cover = torch.zeros(h, w, dtype=torch.int64)
    for region in tile_grid(h, w, rows, cols):
        cover[region.rows.start : region.rows.stop, region.cols.start : region.cols.stop] += 1
    assert bool((cover == 1).all())


def test_region_within_gives_local_slices() -> None:
    outer = TileRegion.of(2, 10, 3, 9)
    rows, cols = TileRegion.of(4, 6, 3, 5).within(outer)
    assert (rows, cols) == (slice(2, 4), slice(0, 2))
    with pytest.raises(GeometryError, match="not inside"):
        TileRegion.of(0, 3, 3, 5).within(outer)


def test_invalid_geometry_is_rejected() -> None:
    with pytest.raises(GeometryError):
        Span(3, 2)
    with pytest.raises(GeometryError):
        Window(kernel=0)
    with pytest.raises(GeometryError):
        split_span(Span(0, 4), 0)
    with pytest.raises(GeometryError):
        tile_grid(0, 4, 1, 1)
