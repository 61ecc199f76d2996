"""The exactness helpers fail when they should and pass when they should."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.exactness import EPS32, faithful, float32_error_bound
from edgeci_mqtt.models import StageChain
from tests.exactness import (
    assert_float32_faithful,
    assert_geometry_exact,
    dependency_box,
    float64_chain,
)

pytestmark = pytest.mark.pure


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_geometry_passes_rounding_and_fails_anything_larger() -> None:
    ref = randn(2, 3, 4, 5)
    ref[0, 0, 0, 0] = 100.0  # the scale
    assert_geometry_exact(ref.clone(), ref)
    assert_geometry_exact(ref + 1e-10, ref)
    off = ref.clone()
    off[1, 2, 3, 4] += 1e-6
    with pytest.raises(AssertionError, match=r"ctx: max \|got - ref\| = 1e-06 > 1e-10 x max \|ref\| = 1e-08"):
        assert_geometry_exact(off, ref, "ctx")


def test_geometry_needs_float64_and_equal_shapes() -> None:
    ref = randn(1, 2, 3, 3)
    with pytest.raises(AssertionError, match=r"got is torch\.float32; this comparison needs torch\.float64"):
        assert_geometry_exact(ref.float(), ref)
    with pytest.raises(AssertionError, match=r"shape \(1, 2, 1, 3\) != reference \(1, 2, 3, 3\)"):
        assert_geometry_exact(ref[:, :, :1], ref)  # would broadcast


def test_geometry_infinities_must_match_and_nan_never_does() -> None:
    ref = randn(1, 1, 2, 2)
    ref[0, 0, 0, 0] = -torch.inf  # a max pool that read only padding
    assert_geometry_exact(ref.clone(), ref)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_geometry_exact(torch.where(torch.isinf(ref), 0.0, ref), ref)
    with pytest.raises(AssertionError):
        assert_geometry_exact(torch.where(ref == ref.max(), torch.inf, ref), ref)
    with pytest.raises(AssertionError):
        assert_geometry_exact(torch.where(ref == ref.max(), torch.nan, ref), ref)


def test_an_all_zero_reference_must_be_met_exactly() -> None:
    zero = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    assert_geometry_exact(zero.clone(), zero)
    with pytest.raises(AssertionError):
        assert_geometry_exact(zero + 1e-300, zero)


def model_answers(seed: int = 1) -> tuple[Tensor, Tensor]:
    """A float64 oracle and a float32 'model' answer with errors of ~1e-4, far above the
    64 roundings of the floor (~3e-5 at this scale)."""
    ref64 = randn(1, 1000, seed=seed)
    return (ref64 + 1e-4 * randn(1, 1000, seed=seed + 1)).float(), ref64


def test_float32_error_bound_is_twice_the_models_error_plus_64_roundings() -> None:
    ref32, ref64 = model_answers()
    own = float((ref32.double() - ref64).abs().max())
    assert float32_error_bound(ref32, ref64) == pytest.approx(2 * own + 64 * EPS32 * float(ref64.abs().max()))


def test_faithful_passes_another_kernels_rounding_and_fails_more() -> None:
    ref32, ref64 = model_answers()
    other_kernel = (ref64 + 1e-4 * randn(1, 1000, seed=9)).float()  # same size of error, other errors
    assert faithful(other_kernel, ref32, ref64)
    assert_float32_faithful(other_kernel, ref32, ref64)
    worse = ref32 + 3 * (ref32.double() - ref64).abs().max().float()
    assert not faithful(worse, ref32, ref64)
    with pytest.raises(AssertionError, match=r"max \|got32 - ref64\| = .* > bound .*own error is"):
        assert_float32_faithful(worse, ref32, ref64, "ctx")


def test_faithful_allows_rounding_where_the_model_is_exact() -> None:
    """A model exact in float32 (here: values float32 holds) still leaves 64 roundings."""
    ref64 = randn(1, 100).float().double()
    ref32 = ref64.float()
    scale = float(ref64.abs().max())
    assert faithful(ref32 + 10 * EPS32 * scale, ref32, ref64)
    assert not faithful(ref32 + 100 * EPS32 * scale, ref32, ref64)


def test_faithful_needs_the_right_dtypes_and_shapes() -> None:
    ref32, ref64 = model_answers()
    with pytest.raises(AssertionError, match=r"ref64 is torch\.float32"):
        assert_float32_faithful(ref32, ref32, ref32)
    with pytest.raises(AssertionError, match=r"got is torch\.float64"):
        assert_float32_faithful(ref64, ref32, ref64)
    with pytest.raises(AssertionError, match="shape"):
        assert_float32_faithful(ref32[:, :1], ref32, ref64)


def conv(x: Tensor) -> Tensor:
    return F.conv2d(x, torch.ones(1, 1, 3, 3, dtype=x.dtype), padding=1)


def test_dependency_box_of_a_3x3_convolution() -> None:
    x = randn(1, 1, 6, 7)
    assert dependency_box(conv, x, TileRegion.of(2, 3, 4, 5)) == TileRegion.of(1, 4, 3, 6)
    assert dependency_box(conv, x, TileRegion.of(0, 1, 0, 1)) == TileRegion.of(0, 2, 0, 2)
    assert dependency_box(lambda t: 0 * t, x, TileRegion.of(0, 1, 0, 1)) is None


def test_rounding_that_depends_on_the_batch_size_is_no_dependence() -> None:
    """The unchanged and the changed inputs run in batches of different sizes."""
    x = randn(1, 1, 5, 5)

    def by_batch(t: Tensor) -> Tensor:  # a kernel whose rounding depends on the batch size
        return conv(t) * (1 + 1e-15 * t.shape[0])

    assert dependency_box(by_batch, x, TileRegion.of(2, 3, 2, 3)) == TileRegion.of(1, 4, 1, 4)


def test_outputs_that_read_only_padding_do_not_hide_the_others() -> None:
    """A max pool reading only padding gives -inf there; the rest of the tile still counts."""
    x = randn(1, 1, 5, 5)

    def first_column_padding_only(t: Tensor) -> Tensor:
        out = conv(t)
        out[..., 0] = -torch.inf
        return out

    assert dependency_box(first_column_padding_only, x, TileRegion.of(2, 3, 0, 2)) == TileRegion.of(1, 4, 0, 3)
    assert dependency_box(first_column_padding_only, x, TileRegion.of(2, 3, 0, 1)) is None


def test_a_weak_dependence_is_still_one() -> None:
    x = randn(1, 1, 4, 4)
    weights = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    weights[0, 0, 1, 1], weights[0, 0, 0, 0] = 1.0, 1e-6

    def weak(t: Tensor) -> Tensor:
        return F.conv2d(t, weights, padding=1)

    assert dependency_box(weak, x, TileRegion.of(2, 3, 2, 3)) == TileRegion.of(1, 3, 1, 3)


def test_dependency_box_needs_float64() -> None:
    with pytest.raises(AssertionError, match="float64"):
        dependency_box(conv, randn(1, 1, 3, 3).float(), TileRegion.of(0, 1, 0, 1))


def test_the_float64_chain_is_a_copy_whose_stages_run_in_float64(chains: dict[str, StageChain]) -> None:
    chain = chains["smallcnn"]
    chain64 = float64_chain(chain)
    assert all(p.dtype == torch.float64 for p in chain64.model.parameters())
    assert all(p.dtype == torch.float32 for p in chain.model.parameters())
    x = randn(1, 3, 20, 20)
    with torch.inference_mode():
        features = chain64.kernels[0].run(
            x, TileRegion.whole(20, 20), TileRegion.whole(20, 20), chain.shapes(20, 20)[0]
        )
    assert features.dtype == torch.float64
