"""How one axis of an op's output reads one axis of an input: the geometry regions walk back through.

Every spatial op of a graph answers, per input and per axis (rows, columns), two
questions: how long its output is for an input of length ``n``, and which input indices
(a span, clipped to the map) an output span reads. A sliding window
(:class:`~edgeci_mqtt.core.geometry.Window`: convolutions, pools, padding,
space-to-depth) already answers both; this module adds the axes a graph has besides:
a resize (:class:`Resample`, nearest or linear, every coordinate mode the ONNX exporters
emit), an input broadcast along the axis (:class:`Broadcast`) and a global reduction
(:class:`Whole`). Pure integer geometry; coordinates are float64, as in the executor
(:mod:`edgeci_mqtt.graph.torch_ops`), which takes its indices and weights from the same
:meth:`Resample.taps`, so the span a region needs is the span its computation reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.errors import GeometryError

__all__ = ["COORDINATE_MODES", "NEAREST_MODES", "Axis", "Broadcast", "Resample", "Whole"]

CoordinateMode = Literal[
    "half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn", "half_pixel_symmetric"
]
NearestMode = Literal["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
COORDINATE_MODES: tuple[str, ...] = CoordinateMode.__args__  # type: ignore[attr-defined]
NEAREST_MODES: tuple[str, ...] = NearestMode.__args__  # type: ignore[attr-defined]


class Axis(Protocol):
    """One axis of an op, output side to input side."""

    def output_size(self, n: int) -> int:
        """Output length for input length ``n``."""
        ...

    def needed(self, out: Span, n: int) -> Span:
        """The input indices in ``[0, n)`` outputs ``out`` read, as one span."""
        ...


@dataclass(frozen=True)
class Broadcast:
    """An input of length 1 stretched over the output (a squeeze-excitation gate, a
    per-channel constant): every output index reads index 0."""

    length: int

    def output_size(self, n: int) -> int:
        return self.length

    def needed(self, out: Span, n: int) -> Span:
        return Span(0, 1)


@dataclass(frozen=True)
class Whole:
    """A global reduction: one output index that reads the whole axis."""

    def output_size(self, n: int) -> int:
        return 1

    def needed(self, out: Span, n: int) -> Span:
        return Span(0, n)


@dataclass(frozen=True)
class Resample:
    """A resize along one axis, exactly as ONNX ``Resize`` defines it (and PyTorch's
    ``interpolate`` for the modes it has): output index ``o`` maps to the input
    coordinate of ``mode``; ``nearest`` rounds it by ``rounding``, ``linear`` blends the
    two indices around it (clamped to the map). ``scale`` is the one the coordinates use:
    the given scale, or ``size / n`` when the model gave sizes."""

    size: int
    scale: float
    interpolation: Literal["nearest", "linear"] = "nearest"
    mode: CoordinateMode = "half_pixel"
    rounding: NearestMode = "round_prefer_floor"

    def __post_init__(self) -> None:
        if self.size < 1 or not self.scale > 0 or not math.isfinite(self.scale):
            raise GeometryError(f"invalid resize to {self.size} at scale {self.scale}")
        if self.mode not in COORDINATE_MODES or self.rounding not in NEAREST_MODES:
            raise GeometryError(f"resize mode {self.mode!r} / {self.rounding!r} is not supported")

    def output_size(self, n: int) -> int:
        return self.size

    def coordinate(self, o: int, n: int) -> float:
        """The input coordinate output index ``o`` samples (float64, before clamping)."""
        s, size = self.scale, self.size
        if self.mode == "align_corners":
            return 0.0 if size == 1 else o * (n - 1) / (size - 1)
        if self.mode == "asymmetric":
            return o / s
        if self.mode == "tf_half_pixel_for_nn":
            return (o + 0.5) / s
        if self.mode == "pytorch_half_pixel":
            return (o + 0.5) / s - 0.5 if size > 1 else 0.0
        if self.mode == "half_pixel_symmetric":
            adjustment = size / (s * n)
            return n / 2 * (1 - adjustment) + (o + 0.5) / s - 0.5
        return (o + 0.5) / s - 0.5  # half_pixel

    def taps(self, o: int, n: int) -> tuple[int, int, float]:
        """``(i0, i1, w)``: output ``o`` is ``(1 - w) * x[i0] + w * x[i1]`` (nearest: ``w``
        is 0 and ``i1 == i0``). A blend weight of exactly 0 reads one index only."""
        x = self.coordinate(o, n)
        if self.interpolation == "nearest":
            if self.rounding == "floor":
                i = math.floor(x)
            elif self.rounding == "ceil":
                i = math.ceil(x)
            elif self.rounding == "round_prefer_ceil":
                i = math.floor(x + 0.5)
            else:  # round_prefer_floor: halves go down
                i = math.ceil(x - 0.5)
            i = min(max(i, 0), n - 1)
            return i, i, 0.0
        x = min(max(x, 0.0), float(n - 1))
        i0 = min(math.floor(x), n - 1)
        w = x - i0
        return (i0, i0, 0.0) if w == 0.0 else (i0, min(i0 + 1, n - 1), w)

    def needed(self, out: Span, n: int) -> Span:
        if out.size == 0:
            return Span(0, 0)
        # The sampled coordinate does not decrease with o: the first and last outputs bound the span.
        first, last = self.taps(out.start, n), self.taps(out.stop - 1, n)
        return Span(min(first[0], last[0]), max(first[1], last[1]) + 1)
