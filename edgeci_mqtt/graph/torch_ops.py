"""Graph ops run with torch on regions: any output region from operands holding what it needs.

The rule that makes stitched tiles equal the whole map is the one the chain kernels
follow (:mod:`edgeci_mqtt.core.kernels`): padding is made only where a region's reach
leaves the *global* map (zeros, ``-inf`` for max pooling, the pad value of a ``Pad``),
interior edges read the real halo the caller holds, and an average's divisor is the one
of the window's global position. A whole-map run is the special case where every region
is whole, so one code path serves both, and resizes are computed from the same taps
(:meth:`~edgeci_mqtt.graph.axes.Resample.taps`) that say which rows they need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from edgeci_mqtt.core.geometry import Span, TileRegion, Window
from edgeci_mqtt.core.kernels import padded_input, pool_divisors
from edgeci_mqtt.errors import GeometryError, ModelError
from edgeci_mqtt.graph import ops
from edgeci_mqtt.graph.axes import Resample

__all__ = ["run_spatial", "run_tail"]

Params = Mapping[str, Tensor]


def _crop(x: Tensor, held: TileRegion, need: TileRegion) -> Tensor:
    if not held.contains(need):
        raise GeometryError(f"an operand holding {held} does not cover the needed {need}")
    rows, cols = need.within(held)
    return x[:, :, rows, cols]


def _padded(
    x: Tensor, held: TileRegion, out: TileRegion, windows: tuple[Window, Window], shape: ops.Shape, fill: float
) -> Tensor:
    return padded_input(x, held, out, windows, shape[2], shape[3], fill)


def _resample(x: Tensor, axis: Resample, out: Span, held: Span, n: int, dim: int) -> Tensor:
    """Resize ``x`` (holding input span ``held`` along ``dim``) to output span ``out``."""
    taps = [axis.taps(o, n) for o in range(out.start, out.stop)]
    i0 = torch.tensor([t[0] - held.start for t in taps], dtype=torch.int64)
    if all(t[2] == 0.0 for t in taps):
        return x.index_select(dim, i0)
    i1 = torch.tensor([t[1] - held.start for t in taps], dtype=torch.int64)
    w = torch.tensor([t[2] for t in taps], dtype=torch.float64).to(x.dtype)
    w = w.view(-1, 1) if dim == 2 else w.view(1, -1)
    a, b = x.index_select(dim, i0), x.index_select(dim, i1)
    return a + (b - a) * w


def _activation(op: ops.Activation, x: Tensor) -> Tensor:
    f = op.function
    if f == "relu":
        return torch.relu(x)
    if f == "clip":
        return torch.clamp(x, min=None if math.isinf(op.low) else op.low, max=None if math.isinf(op.high) else op.high)
    if f == "leaky_relu":
        return F.leaky_relu(x, op.alpha)
    if f == "sigmoid":
        return torch.sigmoid(x)
    if f == "hard_sigmoid":
        return torch.clamp(x * op.alpha + op.beta, 0.0, 1.0)
    if f == "hard_swish":
        return F.hardswish(x)
    if f == "silu":
        return F.silu(x)
    return torch.tanh(x)


Operands = Sequence[Tensor]
Held = Sequence[TileRegion | None]


def run_spatial(
    op: ops.SpatialOp, operands: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    """Compute region ``out`` of ``op``'s output. ``operands[k]`` holds region ``held[k]``
    of a map of shape ``shapes[k]``, or is a constant from the weights (``held[k]`` None,
    broadcast as it is: only a binary op or a concatenation takes one)."""
    run = _SPATIAL.get(type(op))
    if run is None:
        raise ModelError(f"no torch kernel for {op.kind}")
    return run(op, operands, held, shapes, out, params)


def _needed(op: ops.SpatialOp, shapes: Sequence[ops.Shape], out: TileRegion, k: int = 0) -> TileRegion:
    rows, cols = op.axes(shapes)[k]
    shape = ops.as_map(shapes[k])
    return TileRegion(rows.needed(out.rows, shape[2]), cols.needed(out.cols, shape[3]))


def _conv(
    op: ops.Conv, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    x = _padded(xs[0], _one(held), out, op.windows, shapes[0], 0.0)
    bias = params[op.bias] if op.bias else None
    return F.conv2d(x, params[op.weight], bias, op.stride, 0, op.dilation, op.groups)


def _pool(
    op: ops.Pool, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    fill = float("-inf") if op.function == "max" else 0.0
    x = _padded(xs[0], _one(held), out, op.windows, shapes[0], fill)
    if op.function == "max":
        return F.max_pool2d(x, op.kernel, op.stride, 0, op.dilation)
    sums = F.avg_pool2d(x, op.kernel, op.stride, 0, divisor_override=1)
    rows, cols = op.windows
    divisors = (
        pool_divisors(rows, out.rows, shapes[0][2], op.count_include_pad)[:, None]
        * pool_divisors(cols, out.cols, shapes[0][3], op.count_include_pad)[None, :]
    )
    return sums / divisors.to(sums.dtype)


def _pad(op: ops.Pad, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params) -> Tensor:
    return _padded(xs[0], _one(held), out, op.windows, shapes[0], op.value)


def _batch_norm(
    op: ops.BatchNorm, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    x = _crop(xs[0], _one(held), out)
    return F.batch_norm(x, params[op.mean], params[op.var], params[op.scale], params[op.bias], False, 0.0, op.epsilon)


def _act(
    op: ops.Activation, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    return _activation(op, _crop(xs[0], _one(held), out))


def _operands(
    op: ops.SpatialOp, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion
) -> list[Tensor]:
    """Each operand cropped to what ``out`` reads of it (a constant is whole: as a map of its
    own size, so one that varies over rows is cut like a map and one of size 1 broadcasts)."""
    parts = []
    for k, (x, h) in enumerate(zip(xs, held, strict=True)):
        if h is None:
            x = x.reshape((1,) * (4 - x.dim()) + tuple(x.shape))
            h = TileRegion.whole(int(x.shape[2]), int(x.shape[3]))
        parts.append(_crop(x, h, _needed(op, shapes, out, k)))
    return parts


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
}


def _binary(
    op: ops.Binary, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    a, b = _operands(op, xs, held, shapes, out)
    return _BINARY[op.function](a, b)


def _concat(
    op: ops.Concat, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    return torch.cat(_operands(op, xs, held, shapes, out), dim=1)


def _global(
    op: ops.GlobalPool, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    x = _crop(xs[0], _one(held), TileRegion.whole(shapes[0][2], shapes[0][3]))
    return x.mean(dim=(2, 3), keepdim=True) if op.function == "mean" else x.amax(dim=(2, 3), keepdim=True)


def _resize(
    op: ops.Resize, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    need = _needed(op, shapes, out)
    x = _crop(xs[0], _one(held), need)
    x = _resample(x, op.rows, out.rows, need.rows, shapes[0][2], 2)
    return _resample(x, op.cols, out.cols, need.cols, shapes[0][3], 3)


def _space_to_depth(
    op: ops.SpaceToDepth, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    x = _crop(xs[0], _one(held), _needed(op, shapes, out))
    b = op.block
    n, c, h, w = (int(d) for d in x.shape)
    cells = x.reshape(n, c, h // b, b, w // b, b).permute(0, 1, 3, 5, 2, 4).reshape(n, c * b * b, h // b, w // b)
    order = torch.tensor([s[0] * b * b + s[1] * b + s[2] for s in op.sources], dtype=torch.int64)
    return cells.index_select(1, order)


def _depth_to_space(
    op: ops.DepthToSpace, xs: Operands, held: Held, shapes: Sequence[ops.Shape], out: TileRegion, params: Params
) -> Tensor:
    need = _needed(op, shapes, out)
    x = _crop(xs[0], _one(held), need)
    b = op.block
    n, c, h, w = (int(d) for d in x.shape)
    if op.order == "CRD":
        y = F.pixel_shuffle(x, b)
    else:
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)
    made = TileRegion.of(need.rows.start * b, need.rows.stop * b, need.cols.start * b, need.cols.stop * b)
    return _crop(y, made, out)


_SPATIAL: dict[type, Callable[..., Tensor]] = {
    ops.Conv: _conv,
    ops.Pool: _pool,
    ops.Pad: _pad,
    ops.BatchNorm: _batch_norm,
    ops.Activation: _act,
    ops.Binary: _binary,
    ops.Concat: _concat,
    ops.GlobalPool: _global,
    ops.Resize: _resize,
    ops.SpaceToDepth: _space_to_depth,
    ops.DepthToSpace: _depth_to_space,
}


def _one(held: Sequence[TileRegion | None]) -> TileRegion:
    if held[0] is None:
        raise ModelError("a one-operand op was given a constant instead of a map")
    return held[0]


def run_tail(op: ops.Op, x: Tensor, params: Params) -> Tensor:
    """A tail op on its whole operand."""
    if isinstance(op, ops.Flatten):
        return x.reshape(math.prod(x.shape[: op.axis]), -1)
    if isinstance(op, ops.Reshape):
        return x.reshape(op.shape)
    if isinstance(op, ops.Transpose):
        return x.permute(op.perm)
    if isinstance(op, ops.TailActivation):
        return _activation(op.activation, x)
    if isinstance(op, ops.Softmax):
        return torch.softmax(x, op.axis)
    if isinstance(op, ops.Gemm):
        w = params[op.weight]
        y = x @ (w.t() if op.trans_b else w)
        y = y * op.alpha if op.alpha != 1.0 else y
        return y + op.beta * params[op.bias] if op.bias else y
    if isinstance(op, ops.MatMul):
        return x @ params[op.weight]
    raise ModelError(f"no torch kernel for tail op {op.kind}")
