"""How close is exact: the helpers every test that compares tensors uses.

Geometry (tiles, fused blocks, residual paths, plans, dependency boxes) is checked in
float64. There rounding is ~1e-16 relative whichever kernel runs, so a tolerance of
:data:`GEOMETRY_RTOL` times the result's scale tells rounding from a real error (a wrong
halo or padding pixel moves outputs by a sizeable part of their scale), on every CPU.

A float32 path (what the runtime ships) is checked as *faithful*: no further from a float64
oracle than the float32 model itself (:mod:`edgeci_mqtt.exactness`, shared with the demo).
A float32-to-float32 tolerance would measure which float32 kernel ran, not the tiling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.exactness import faithful, float32_error_bound, float64_model, max_abs, max_abs_diff
from edgeci_mqtt.models import StageChain, stage_chain

GEOMETRY_RTOL = 1e-10
"""Float64 rounding of these models stays near 1e-15 of the scale; a real error is far above."""


def _check_dtype(name: str, tensor: Tensor, dtype: torch.dtype) -> None:
    """A float32 tensor passed where float64 is due would make a strict check flaky."""
    assert tensor.dtype == dtype, f"{name} is {tensor.dtype}; this comparison needs {dtype}"


def _check_shapes(got: Tensor, *refs: Tensor) -> None:
    """Equal shapes: broadcasting must not hide a missing row or channel."""
    for ref in refs:
        assert got.shape == ref.shape, f"shape {tuple(got.shape)} != reference {tuple(ref.shape)}"


def assert_geometry_exact(got64: Tensor, ref64: Tensor, context: object = "") -> None:
    """``got64`` equals ``ref64`` up to float64 rounding: ``max|got - ref| <= 1e-10 * max|ref|``
    over the finite entries of ``ref64``; infinities (a max pool reading only padding) must
    be the same, and NaN is never exact."""
    _check_dtype("got", got64, torch.float64)
    _check_dtype("ref", ref64, torch.float64)
    _check_shapes(got64, ref64)
    finite = torch.isfinite(ref64)
    assert torch.equal(got64[~finite], ref64[~finite]), f"{context}: non-finite entries differ"
    diff, scale = max_abs_diff(got64[finite], ref64[finite]), max_abs(ref64[finite])
    assert diff <= GEOMETRY_RTOL * scale, (
        f"{context}: max |got - ref| = {diff:.3g} > {GEOMETRY_RTOL:g} x max |ref| = {GEOMETRY_RTOL * scale:.3g}"
    )


def assert_float32_faithful(got32: Tensor, ref32: Tensor, ref64: Tensor, context: object = "") -> None:
    """``got32`` is no further from the float64 oracle ``ref64`` than the float32 model's own
    answer ``ref32`` is (within :func:`edgeci_mqtt.exactness.float32_error_bound`)."""
    _check_dtype("got", got32, torch.float32)
    _check_dtype("ref32", ref32, torch.float32)
    _check_dtype("ref64", ref64, torch.float64)
    _check_shapes(got32, ref32, ref64)
    assert faithful(got32, ref32, ref64), (
        f"{context}: max |got32 - ref64| = {max_abs_diff(got32, ref64):.3g} > bound "
        f"{float32_error_bound(ref32, ref64):.3g} (the float32 model's own error is "
        f"{max_abs_diff(ref32, ref64):.3g}, scale {max_abs(ref64):.3g})"
    )


@dataclass(frozen=True)
class Reference:
    """A float32 input and the whole model's logits for it, in float32 and from the oracle."""

    x: Tensor
    logits32: Tensor
    logits64: Tensor


References = dict[tuple[str, int, int], Reference]
"""The ``references`` fixture: by (model, height, width)."""


def whole_model_reference(chain: StageChain, chain64: StageChain, x: Tensor) -> Reference:
    """What every tiling of ``chain`` must reproduce for ``x``; ``chain64`` is its oracle."""
    with torch.inference_mode():
        return Reference(x, chain.model(x), chain64.model(x.double()))


def float64_chain(chain: StageChain) -> StageChain:
    """The oracle chain: the same weights in float64, in kernels cut from the float64 copy
    (kernels hold references to their modules, so they must come from that copy)."""
    return stage_chain(float64_model(chain.model), chain.model_name)


PROBES = 8  # random large changes per pixel and base input
BASES = 4  # base inputs: a ReLU may hide a dependence at one input, not at all of them
KICK = 1000.0  # size of a change: its effect dwarfs GEOMETRY_RTOL of any output


def dependency_box(f: Callable[[Tensor], Tensor], x: Tensor, out: TileRegion) -> TileRegion | None:
    """Bounding box of the input pixels whose change alters ``f`` on ``out``, near the float64
    input ``x`` or near other random inputs; ``None`` if no pixel does.

    The unchanged and the changed inputs run in batches of different sizes, which may pick
    kernels with other summation orders, so an output counts as altered only if it moves by
    more than :data:`GEOMETRY_RTOL` of the largest finite output: rounding stays ~1e-16 of it,
    and a change of ``KICK`` to a pixel an output reads moves that output by far more.
    Infinite outputs count as altered only if they change at all.
    """
    _check_dtype("x", x, torch.float64)
    _, c, h, w = x.shape
    gen = torch.Generator().manual_seed(7)
    bases = torch.cat([x, 3 * torch.randn(BASES - 1, c, h, w, generator=gen, dtype=x.dtype)])
    n = BASES * PROBES
    batch = bases.repeat_interleave(PROBES, dim=0).repeat(h * w, 1, 1, 1)
    kicks = KICK * torch.randn(n * h * w, c, generator=gen, dtype=x.dtype)
    for i in range(h * w):
        batch[n * i : n * (i + 1), :, i // w, i % w] += kicks[n * i : n * (i + 1)]
    rows, cols = out.rows, out.cols
    base = f(bases)[:, :, rows.start : rows.stop, cols.start : cols.stop].repeat_interleave(PROBES, dim=0)
    moved = f(batch)[:, :, rows.start : rows.stop, cols.start : cols.stop]
    base = base.repeat(h * w, 1, 1, 1)
    finite = torch.isfinite(base) & torch.isfinite(moved)  # -inf: a max pool reading only padding
    threshold = GEOMETRY_RTOL * max(max_abs(base[finite]), max_abs(moved[finite]))
    altered = torch.where(finite, (moved - base).abs() > threshold, moved != base)
    changed = altered.flatten(1).any(dim=1).view(h * w, n).any(dim=1)
    idx = changed.nonzero().flatten()
    if idx.numel() == 0:
        return None
    ys, xs = idx // w, idx % w
    return TileRegion.of(int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
