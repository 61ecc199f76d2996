"""PyTorch functions and tensor methods as graph ops (``F.relu``, ``torch.cat``, ``x.view``...)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph import ops
from edgeci_mqtt.graph.fx_modules import POOL_ARGS, Tracing, adaptive, alias, pool, resize, space

__all__ = ["FUNCTIONS"]


def _act(make: Callable[[fx.Node], ops.Activation]) -> Callable[[Tracing, fx.Node], None]:
    def convert(r: Tracing, node: fx.Node) -> None:
        r.emit(node, make(node), [r.tensor(node.args[0], node.name)])

    return convert


def _kw(node: fx.Node, name: str, position: int, default: Any) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[position] if len(node.args) > position else default


def _binary(function: str, swap: bool = False) -> Callable[[Tracing, fx.Node], None]:
    def convert(r: Tracing, node: fx.Node) -> None:
        a, b = node.args[0], node.args[1]
        if swap:
            a, b = b, a
        if node.kwargs.get("alpha", 1) != 1:
            raise ModelError("add or sub with a scaling alpha is not supported")
        operands = [r.tensor(a, f"{node.name}:a"), r.tensor(b, f"{node.name}:b")]
        r.emit(node, ops.Binary(function=function), operands)  # type: ignore[arg-type]

    return convert


def _cat(r: Tracing, node: fx.Node) -> None:
    tensors = node.args[0]
    dim = int(_kw(node, "dim", 1, 0))
    assert isinstance(tensors, list | tuple)
    if dim % len(r.shape(node)) != 1:
        raise ModelError(f"concatenation along dimension {dim} (only channels, 1, keep maps tileable)")
    r.emit(node, ops.Concat(), [r.tensor(t, node.name) for t in tensors])


def _mean(r: Tracing, node: fx.Node) -> None:
    dims = _kw(node, "dim", 1, None)
    source = node.args[0]
    assert isinstance(source, fx.Node)
    if dims is None or sorted(int(d) % 4 for d in (dims if isinstance(dims, list | tuple) else [dims])) != [2, 3]:
        raise ModelError(f"a mean over dimensions {dims} (only over height and width)")
    kept = f"{node.name}:kept" if not _kw(node, "keepdim", 2, False) else node.name
    r.graph.emit(kept, ops.GlobalPool(function="mean"), [r.graph.operand(source.name)], kept)
    if kept != node.name:
        r.graph.emit(node.name, ops.Reshape(shape=r.shape(node)), [kept], node.name)


def _interpolate(r: Tracing, node: fx.Node) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    mode = str(_kw(node, "mode", 3, "nearest"))
    scale = r.arg(_kw(node, "scale_factor", 2, None))
    if _kw(node, "recompute_scale_factor", 5, None):
        scale = None
    if _kw(node, "antialias", 6, False):
        raise ModelError("antialiased interpolation is not supported")
    resize(r, node, source, mode, r.arg(_kw(node, "align_corners", 4, None)), scale)


def _functional_pool(function: str) -> Callable[[Tracing, fx.Node], None]:
    def convert(r: Tracing, node: fx.Node) -> None:
        names = POOL_ARGS[function]
        args = {name: r.arg(_kw(node, name, k + 1, None)) for k, name in enumerate(names)}
        r.emit(
            node,
            pool(function, {k: v for k, v in args.items() if v is not None}),
            [r.tensor(node.args[0], node.name)],
        )

    return convert


def _functional_pad(r: Tracing, node: fx.Node) -> None:
    pad = [int(p) for p in r.arg(node.args[1])]
    if str(_kw(node, "mode", 2, "constant")) != "constant" or len(pad) not in (2, 4) or min(pad) < 0:
        raise ModelError(f"padding {pad} is not constant padding of height and width")
    left, right, top, bottom = (*pad, 0, 0) if len(pad) == 2 else pad
    value = float(_kw(node, "value", 3, None) or 0.0)
    r.emit(node, ops.Pad(pads=(top, left, bottom, right), value=value), [r.tensor(node.args[0], node.name)])


def _permute(r: Tracing, node: fx.Node) -> None:
    dims = [int(d) for d in (node.args[1:] if not isinstance(node.args[1], list | tuple) else node.args[1])]  # type: ignore[arg-type]
    r.view(node, [d % len(dims) for d in dims])


def _transpose(r: Tracing, node: fx.Node) -> None:
    rank = len(r.shape(node))
    a, b = int(node.args[1]) % rank, int(node.args[2]) % rank  # type: ignore[arg-type]
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    r.view(node, perm)


def _softmax(r: Tracing, node: fx.Node) -> None:
    r.emit(node, ops.Softmax(axis=int(_kw(node, "dim", 1, -1))), [r.tensor(node.args[0], node.name)])


def _functional_adaptive(function: str) -> Callable[[Tracing, fx.Node], None]:
    return lambda r, node: adaptive(r, node, r.arg(_kw(node, "output_size", 1, 1)), function)


def _shuffle_function(sign: int) -> Callable[[Tracing, fx.Node], None]:
    def convert(r: Tracing, node: fx.Node) -> None:
        source = node.args[0]
        assert isinstance(source, fx.Node)
        space(r, node, source, sign * int(r.arg(node.args[1])))

    return convert


_RELU = _act(lambda n: ops.Activation(function="relu"))
_SIGMOID = _act(lambda n: ops.Activation(function="sigmoid"))
FUNCTIONS: dict[Any, Callable[[Tracing, fx.Node], None]] = {
    F.relu: _RELU,
    torch.relu: _RELU,
    "relu": _RELU,
    F.relu6: _act(lambda n: ops.Activation(function="clip", low=0.0, high=6.0)),
    F.hardtanh: _act(
        lambda n: ops.Activation(
            function="clip", low=float(_kw(n, "min_val", 1, -1.0)), high=float(_kw(n, "max_val", 2, 1.0))
        )
    ),
    F.leaky_relu: _act(lambda n: ops.Activation(function="leaky_relu", alpha=float(_kw(n, "negative_slope", 1, 0.01)))),
    torch.sigmoid: _SIGMOID,
    F.sigmoid: _SIGMOID,
    "sigmoid": _SIGMOID,
    F.hardsigmoid: _act(lambda n: ops.Activation(function="hard_sigmoid", alpha=1 / 6, beta=0.5)),
    F.hardswish: _act(lambda n: ops.Activation(function="hard_swish")),
    F.silu: _act(lambda n: ops.Activation(function="silu")),
    torch.tanh: _act(lambda n: ops.Activation(function="tanh")),
    "tanh": _act(lambda n: ops.Activation(function="tanh")),
    operator.add: _binary("add"),
    torch.add: _binary("add"),
    "add": _binary("add"),
    operator.iadd: _binary("add"),
    operator.sub: _binary("sub"),
    torch.sub: _binary("sub"),
    "sub": _binary("sub"),
    operator.mul: _binary("mul"),
    torch.mul: _binary("mul"),
    "mul": _binary("mul"),
    operator.imul: _binary("mul"),
    operator.truediv: _binary("div"),
    torch.div: _binary("div"),
    "div": _binary("div"),
    torch.cat: _cat,
    torch.concat: _cat,
    torch.mean: _mean,
    "mean": _mean,
    F.interpolate: _interpolate,
    F.max_pool2d: _functional_pool("max"),
    F.avg_pool2d: _functional_pool("avg"),
    F.adaptive_avg_pool2d: _functional_adaptive("avg"),
    F.adaptive_max_pool2d: _functional_adaptive("max"),
    F.pad: _functional_pad,
    F.dropout: lambda r, node: alias(r, node),
    "contiguous": lambda r, node: alias(r, node),
    F.pixel_shuffle: _shuffle_function(1),
    F.pixel_unshuffle: _shuffle_function(-1),
    torch.flatten: lambda r, node: r.view(node),
    "flatten": lambda r, node: r.view(node),
    "view": lambda r, node: r.view(node),
    "reshape": lambda r, node: r.view(node),
    torch.reshape: lambda r, node: r.view(node),
    "permute": _permute,
    torch.permute: _permute,
    "transpose": _transpose,
    torch.transpose: _transpose,
    F.softmax: _softmax,
    torch.softmax: _softmax,
    "softmax": _softmax,
}
"""Functions and tensor methods (by name) a traced module may call."""
