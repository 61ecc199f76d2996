"""Integer geometry of feature maps: spans, tile regions, sliding windows.

Everything here is pure integer arithmetic with no torch, so the planner, the
simulator and the wire codecs can reason about regions without touching tensors.
Conventions: spans are half-open ``[start, stop)``; a region is a product of a row
span and a column span; a :class:`Window` describes one axis of a sliding-window op
exactly as PyTorch defines it (kernel, stride, padding, dilation, ceil mode).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeci_mqtt.errors import GeometryError

__all__ = [
    "FeatureShape",
    "Span",
    "TileRegion",
    "Window",
    "split_span",
    "tile_grid",
]


@dataclass(frozen=True, order=True)
class Span:
    """Half-open integer interval ``[start, stop)``; may reach outside a map."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if self.stop < self.start:
            raise GeometryError(f"span [{self.start}, {self.stop}) ends before it starts")

    @property
    def size(self) -> int:
        return self.stop - self.start

    def clip(self, length: int) -> Span:
        """The part of this span inside ``[0, length)`` (empty spans are pinned to a bound)."""
        start = min(max(self.start, 0), length)
        return Span(start, max(start, min(self.stop, length)))

    def contains(self, other: Span) -> bool:
        return self.start <= other.start and other.stop <= self.stop

    def hull(self, other: Span) -> Span:
        """Smallest span covering both."""
        return Span(min(self.start, other.start), max(self.stop, other.stop))

    def __str__(self) -> str:
        return f"[{self.start},{self.stop})"


@dataclass(frozen=True)
class FeatureShape:
    """Shape of one sample's feature map: channels x height x width."""

    channels: int
    height: int
    width: int

    @property
    def numel(self) -> int:
        return self.channels * self.height * self.width

    def __str__(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}"


@dataclass(frozen=True)
class TileRegion:
    """A rectangle of a feature map: ``rows`` x ``cols``, all channels."""

    rows: Span
    cols: Span

    @classmethod
    def whole(cls, height: int, width: int) -> TileRegion:
        return cls(Span(0, height), Span(0, width))

    @classmethod
    def of(cls, y0: int, y1: int, x0: int, x1: int) -> TileRegion:
        return cls(Span(y0, y1), Span(x0, x1))

    @property
    def height(self) -> int:
        return self.rows.size

    @property
    def width(self) -> int:
        return self.cols.size

    @property
    def area(self) -> int:
        return self.rows.size * self.cols.size

    def clip(self, height: int, width: int) -> TileRegion:
        return TileRegion(self.rows.clip(height), self.cols.clip(width))

    def contains(self, other: TileRegion) -> bool:
        return self.rows.contains(other.rows) and self.cols.contains(other.cols)

    def hull(self, other: TileRegion) -> TileRegion:
        return TileRegion(self.rows.hull(other.rows), self.cols.hull(other.cols))

    def intersection(self, other: TileRegion) -> TileRegion | None:
        """The pixels both regions hold, or None when they share none."""
        top, bottom = max(self.rows.start, other.rows.start), min(self.rows.stop, other.rows.stop)
        left, right = max(self.cols.start, other.cols.start), min(self.cols.stop, other.cols.stop)
        return TileRegion.of(top, bottom, left, right) if top < bottom and left < right else None

    def within(self, outer: TileRegion) -> tuple[slice, slice]:
        """Index slices selecting this region from a tensor that holds ``outer``."""
        if not outer.contains(self):
            raise GeometryError(f"region {self} is not inside {outer}")
        return (
            slice(self.rows.start - outer.rows.start, self.rows.stop - outer.rows.start),
            slice(self.cols.start - outer.cols.start, self.cols.stop - outer.cols.start),
        )

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


@dataclass(frozen=True)
class Window:
    """One axis of a sliding-window op, with PyTorch's exact semantics.

    Output index ``o`` reads input indices ``o*stride - padding + dilation*t`` for
    ``t`` in ``[0, kernel)``; indices outside ``[0, n)`` are padding. ``padding_end``
    is the padding after the last index when it differs from ``padding`` (ONNX's
    asymmetric ``pads``, TensorFlow's "same"): it changes the output length only.
    """

    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    ceil_mode: bool = False
    padding_end: int | None = None

    def __post_init__(self) -> None:
        if self.kernel < 1 or self.stride < 1 or self.dilation < 1 or self.padding < 0 or self.end_padding < 0:
            raise GeometryError(f"invalid window {self}")
        if self.padding_end == self.padding:  # one spelling per window: equal windows compare equal
            object.__setattr__(self, "padding_end", None)

    @property
    def end_padding(self) -> int:
        return self.padding if self.padding_end is None else self.padding_end

    @property
    def extent(self) -> int:
        """Input indices spanned by one window, holes of the dilation included."""
        return self.dilation * (self.kernel - 1) + 1

    def output_size(self, n: int) -> int:
        """Output length for input length ``n`` (0 when the input is too small)."""
        numerator = n + self.padding + self.end_padding - self.extent + (self.stride - 1 if self.ceil_mode else 0)
        out = numerator // self.stride + 1  # floor division, as PyTorch's div_rtn
        # PyTorch: in ceil mode the last window must start inside the input or the left padding.
        if self.ceil_mode and (out - 1) * self.stride >= n + self.padding:
            out -= 1
        return max(out, 0)

    def reach(self, out: Span) -> Span:
        """Input span read by outputs ``out``, before clipping to the map."""
        start = out.start * self.stride - self.padding
        return Span(start, (out.stop - 1) * self.stride - self.padding + self.extent)

    def needed(self, out: Span, n: int) -> Span:
        """Input indices in ``[0, n)`` from the first to the last one that outputs ``out`` read.

        This is :meth:`reach` clipped to the map, tightened where dilation makes the
        windows at the border skip the first or last real indices.
        """
        reach = self.reach(out)
        if self.dilation == 1 or (reach.start >= 0 and reach.stop <= n):
            return reach.clip(n)  # every index of the reach is read
        low, high = n, -1
        for o in range(out.start, out.stop):  # windows starting in the padding, then one more
            start = o * self.stride - self.padding
            taps = range(start, start + self.extent, self.dilation)
            low = min(low, next((t for t in taps if t >= 0), n))
            if start >= 0:
                break
        for o in reversed(range(out.start, out.stop)):  # mirrored at the far border
            start = o * self.stride - self.padding
            taps = range(start, start + self.extent, self.dilation)
            high = max(high, next((t for t in reversed(taps) if t < n), -1))
            if start + self.extent <= n:
                break
        if low > high:  # every window lies in the padding: nothing real is read
            edge = reach.clip(n).start
            return Span(edge, edge)
        return Span(low, high + 1)

    def then(self, outer: Window) -> Window:
        """The single window equivalent to this one followed by ``outer``.

        Dilation folds into the kernel (the composite covers the whole reach);
        ceil mode is a property of the map sizes and does not compose.
        """
        padding = outer.padding * self.stride + self.padding
        end = outer.end_padding * self.stride + self.end_padding
        return Window(
            kernel=outer.dilation * (outer.kernel - 1) * self.stride + self.extent,
            stride=self.stride * outer.stride,
            padding=padding,
            padding_end=None if end == padding else end,
        )

    def __str__(self) -> str:
        text = f"k{self.kernel}s{self.stride}p{self.padding}"
        if self.end_padding != self.padding:
            text += f"-{self.end_padding}"
        if self.dilation != 1:
            text += f"d{self.dilation}"
        return text + ("c" if self.ceil_mode else "")


def split_span(span: Span, parts: int) -> list[Span]:
    """Cut ``span`` into ``parts`` contiguous pieces whose sizes differ by at most one.

    A request for more parts than there are indices yields one-index pieces.
    """
    if parts < 1:
        raise GeometryError(f"cannot split into {parts} parts")
    parts = min(parts, span.size)
    base, extra = divmod(span.size, parts)
    pieces, start = [], span.start
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        pieces.append(Span(start, stop))
        start = stop
    return pieces


def tile_grid(height: int, width: int, rows: int, cols: int) -> list[TileRegion]:
    """A ``rows`` x ``cols`` grid of near-equal tiles covering a ``height`` x ``width`` map."""
    if height < 1 or width < 1:
        raise GeometryError(f"cannot tile an empty {height}x{width} map")
    return [TileRegion(r, c) for r in split_span(Span(0, height), rows) for c in split_span(Span(0, width), cols)]
