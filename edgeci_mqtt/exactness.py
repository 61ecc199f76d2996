"""When a float32 result counts as the model's own answer.

Fused tiles compute exactly what the whole model computes, but in float32 the result is
rounded, and how depends on the kernel: convolution kernels sum in an order chosen by the
tile shape, the batch size and the CPU. Two float32 runs of the same exact computation can
therefore differ by 1e-4 on one machine and 1e-6 on another, and a fixed tolerance between
them measures the kernel, not the tiling.

The portable question is asked against a float64 run of the model (the oracle, rounding
~1e-16 relative): is the result no further from the exact answer than the float32 model
itself is? Then it is as good as the model's own float32 answer, on any CPU.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["EPS32", "ROUNDING_FLOOR", "faithful", "float32_error_bound", "float64_model", "max_abs", "max_abs_diff"]

EPS32 = float(torch.finfo(torch.float32).eps)
"""Spacing of float32 numbers at 1.0 (2**-23)."""

ROUNDING_FLOOR = 64
"""Float32 roundings at the result's scale always allowed, so that the bound does not
collapse where the float32 model happens to be nearly exact (a shallow model, a small
input); a real error (a wrong halo pixel) moves outputs by a sizeable part of their scale."""


def max_abs(t: Tensor) -> float:
    """``max|t|`` in float64 (0 for an empty tensor): the scale of a result."""
    return float(t.detach().double().abs().max()) if t.numel() else 0.0


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """``max|a - b|`` computed in float64, so that comparing float32 with float64 adds no rounding."""
    return max_abs(a.detach().double() - b.detach().double())


def float32_error_bound(ref32: Tensor, ref64: Tensor) -> float:
    """How far from the oracle ``ref64`` a float32 result may be: twice the float32 model's
    own error (``ref32``: another summation order makes errors of the same size but not the
    same errors, so the worst of them may add up), plus :data:`ROUNDING_FLOOR` roundings."""
    return 2 * max_abs_diff(ref32, ref64) + ROUNDING_FLOOR * EPS32 * max_abs(ref64)


def faithful(got32: Tensor, ref32: Tensor, ref64: Tensor) -> bool:
    """Whether ``got32`` is no worse than the float32 model's own answer ``ref32``, both
    measured against the float64 oracle ``ref64`` of the same computation."""
    return max_abs_diff(got32, ref64) <= float32_error_bound(ref32, ref64)


def float64_model(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model``, the oracle: the original keeps its float32 weights."""
    return copy.deepcopy(model).double()
