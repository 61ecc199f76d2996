"""Read a PyTorch module into a :class:`~edgeci_mqtt.graph.graph.Graph` by tracing it with ``torch.fx``.

The module is traced symbolically, then run once on a zero image of the requested size
with an interpreter that records every node's value: what is not a tensor there (sizes,
``x.shape[2:]``, arithmetic on them) is a constant at that size, which is how shape code
folds without a special case. Every tensor node becomes a step of a
:class:`~edgeci_mqtt.graph.builder.GraphBuilder`, by the module class or the function it
calls. Weights keep their ``state_dict`` names (``features.0.weight``), so checkpoints
load as they are and a device can fetch a stage's weights by name.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph import ops
from edgeci_mqtt.graph.axes import Resample
from edgeci_mqtt.graph.builder import Array, GraphBuilder
from edgeci_mqtt.graph.graph import Graph

__all__ = ["read_module"]


def read_module(
    module: nn.Module, size: tuple[int, int], in_channels: int = 3, name: str | None = None
) -> tuple[Graph, dict[str, Array]]:
    """The graph of ``module`` (in eval mode) for one ``in_channels`` x ``size`` image, and its weights."""
    name = name or type(module).__name__
    module = module.eval()
    try:
        traced = fx.symbolic_trace(module)
    except Exception as exc:  # fx raises TraceError, TypeError, ... for data-dependent Python
        raise ModelError(f"{name}: torch.fx cannot trace it ({type(exc).__name__}: {exc})") from exc
    values = _Recorder(traced).values(torch.zeros(1, in_channels, *size))
    return _FxReader(traced, values, name).read()


class _Recorder(fx.Interpreter):
    """Runs the traced module once, keeping each node's value."""

    def values(self, x: Tensor) -> dict[str, Any]:
        self.seen: dict[str, Any] = {}
        with torch.no_grad():
            self.run(x)
        return self.seen

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.seen[n.name] = value
        return value


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _pads(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":  # PyTorch puts the odd pixel at the end
        total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2
    p = _pair(padding)
    return p[0], p[1], p[0], p[1]


class _FxReader:
    def __init__(self, traced: fx.GraphModule, values: dict[str, Any], name: str) -> None:
        self.traced, self.values, self.name = traced, values, name
        self.graph = GraphBuilder(name)
        self.modules = dict(traced.named_modules())

    def read(self) -> tuple[Graph, dict[str, Array]]:
        for name, tensor in self.traced.state_dict().items():
            self.graph.constant(name, tensor.detach().cpu().numpy())
        outputs: list[str] = []
        for node in self.traced.graph.nodes:
            try:
                if node.op == "output":
                    outputs = [self.graph.output(t.name) for t in _flat(node.args[0])]
                else:
                    self._node(node)
            except ModelError as exc:
                raise ModelError(f"{self.name}: node {node.name!r} ({_what(node)}): {exc}") from exc
        return self.graph.build(outputs)

    # --- values -----------------------------------------------------------------------------

    def _arg(self, value: Any) -> Any:
        """A node argument as a concrete value (nodes of non-tensors are constants here)."""
        if isinstance(value, fx.Node):
            v = self.values[value.name]
            return value.name if isinstance(v, Tensor) else v
        if isinstance(value, list | tuple):
            return type(value)(self._arg(v) for v in value)
        return value

    def _tensor(self, value: Any, label: str) -> str:
        """A tensor operand's name; a Python number becomes a named constant."""
        if isinstance(value, fx.Node) and isinstance(self.values[value.name], Tensor):
            return self.graph.resolve(value.name)
        if isinstance(value, int | float):
            name = f"{label}:constant"
            self.graph.constant(name, np.array(value, dtype=np.float32))
            return name
        raise ModelError(f"operand {value!r} is not a tensor")

    def _node(self, node: fx.Node) -> None:
        value = self.values.get(node.name)
        if node.op == "placeholder":
            if not isinstance(value, Tensor):
                raise ModelError("the model's input is not a tensor")
            self.graph.set_input(node.name, tuple(int(d) for d in value.shape))
            return
        if node.op == "get_attr":
            self.graph.constant(node.name, value.detach().numpy() if isinstance(value, Tensor) else np.asarray(value))
            return
        if not isinstance(value, Tensor):  # shape arithmetic: a constant at this size
            if not isinstance(value, int | float | tuple | list | torch.Size | bool | type(None)):
                raise ModelError(f"it computes a {type(value).__name__}, neither a tensor nor a size")
            return
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            convert = _MODULES.get(type(module))
            if convert is None:
                raise ModelError(f"module {type(module).__name__} is not supported")
            convert(self, node, module)
        elif node.op in ("call_function", "call_method"):
            key = node.target if node.op == "call_function" else str(node.target).rstrip("_")
            convert_f = _FUNCTIONS.get(key)
            if convert_f is None:
                raise ModelError(f"{_what(node)} is not supported")
            convert_f(self, node)
        else:
            raise ModelError(f"node kind {node.op} is not supported")

    def emit(self, node: fx.Node, op: ops.Op, operands: list[str]) -> None:
        tail = not op.spatial
        self.graph.emit(node.name, op, [self.graph.operand(t, tail) for t in operands], node.name)

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(int(d) for d in self.values[node.name].shape)

    def view(self, node: fx.Node, perm: list[int] | None = None) -> None:
        source = node.args[0]
        assert isinstance(source, fx.Node)
        out = self.shape(node)
        fold: Callable[[Array], Array] = (
            (lambda index: np.transpose(index, perm)) if perm is not None else (lambda index: index.reshape(out))
        )
        tensor = self.graph.resolve(source.name)
        if self.graph.is_map(tensor) or self.graph.is_viewed(tensor):
            self.graph.view(node.name, tensor, node.name, fold, perm)
        elif perm is not None:
            self.graph.emit(node.name, ops.Transpose(perm=tuple(perm)), [self.graph.operand(tensor, True)], node.name)
        else:
            self.graph.emit(node.name, ops.Reshape(shape=out), [self.graph.operand(tensor, True)], node.name)


def _flat(value: Any) -> list[fx.Node]:
    if isinstance(value, fx.Node):
        return [value]
    if isinstance(value, list | tuple):
        return [n for v in value for n in _flat(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _flat(v)]
    raise ModelError(f"output {value!r} is not a tensor")


def _what(node: fx.Node) -> str:
    target = node.target
    return getattr(target, "__name__", str(target)) if node.op != "call_module" else f"module {target}"


# --- modules ------------------------------------------------------------------------------------


def _conv(r: _FxReader, node: fx.Node, m: nn.Conv2d) -> None:
    if m.padding_mode != "zeros":
        raise ModelError(f"padding_mode {m.padding_mode!r} is not supported")
    kernel, dilation = _pair(m.kernel_size), _pair(m.dilation)
    op = ops.Conv(
        weight=f"{node.target}.weight",
        bias=f"{node.target}.bias" if m.bias is not None else None,
        in_channels=m.in_channels,
        out_channels=m.out_channels,
        kernel=kernel,
        stride=_pair(m.stride),
        pads=_pads(m.padding, kernel, dilation),
        dilation=dilation,
        groups=m.groups,
    )
    r.emit(node, op, [r._tensor(node.args[0], node.name)])


def _batch_norm(r: _FxReader, node: fx.Node, m: nn.BatchNorm2d) -> None:
    if m.running_mean is None or m.running_var is None:
        raise ModelError("batch norm without running statistics is not inference")
    names = {}
    for part, default in (("weight", np.ones), ("bias", np.zeros)):
        names[part] = f"{node.target}.{part}"
        if getattr(m, part) is None:
            names[part] = f"{node.target}:{part}"
            r.graph.constant(names[part], default(m.num_features, dtype=np.float32))
    op = ops.BatchNorm(
        scale=names["weight"],
        bias=names["bias"],
        mean=f"{node.target}.running_mean",
        var=f"{node.target}.running_var",
        epsilon=float(m.eps),
    )
    r.emit(node, op, [r._tensor(node.args[0], node.name)])


def _module_act(make: Callable[[Any], ops.Activation]) -> Callable[[_FxReader, fx.Node, Any], None]:
    def convert(r: _FxReader, node: fx.Node, m: Any) -> None:
        r.emit(node, make(m), [r._tensor(node.args[0], node.name)])

    return convert


def _alias(r: _FxReader, node: fx.Node, m: Any = None) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    r.graph.alias(node.name, source.name)


_POOL_ARGS = {
    "max": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
}
"""PyTorch's pooling arguments, in the order ``F.max_pool2d`` and ``F.avg_pool2d`` take them."""


def _pool(function: str, args: Mapping[str, Any]) -> ops.Pool:
    """A max or average pool from PyTorch's arguments by name (symmetric padding)."""
    if args.get("return_indices"):
        raise ModelError("max pooling that returns indices is not supported")
    if args.get("divisor_override") is not None:
        raise ModelError("average pooling with a divisor override is not supported")
    kernel, p = _pair(args["kernel_size"]), _pair(args.get("padding", 0))
    return ops.Pool(
        function=function,  # type: ignore[arg-type]
        kernel=kernel,
        stride=_pair(args.get("stride") or kernel),
        pads=(p[0], p[1], p[0], p[1]),
        dilation=_pair(args.get("dilation", 1)),
        ceil_mode=bool(args.get("ceil_mode", False)),
        count_include_pad=function == "avg" and bool(args.get("count_include_pad", True)),
    )


def _pool_module(r: _FxReader, node: fx.Node, m: nn.MaxPool2d | nn.AvgPool2d) -> None:
    function = "max" if isinstance(m, nn.MaxPool2d) else "avg"
    op = _pool(function, {name: getattr(m, name) for name in _POOL_ARGS[function]})
    r.emit(node, op, [r._tensor(node.args[0], node.name)])


def _adaptive(r: _FxReader, node: fx.Node, out_size: Any, function: str) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    _, _, h, w = r.shape(source)
    oh, ow = _pair(out_size) if out_size is not None else (h, w)
    oh, ow = (h if oh is None else oh), (w if ow is None else ow)
    tensor = r._tensor(source, node.name)
    if (oh, ow) == (1, 1):
        r.emit(node, ops.GlobalPool(function="mean" if function == "avg" else "max"), [tensor])
    elif (oh, ow) == (h, w):
        r.graph.alias(node.name, tensor)
    elif h % oh == 0 and w % ow == 0:
        kernel = (h // oh, w // ow)
        r.emit(node, ops.Pool(function=function, kernel=kernel, stride=kernel), [tensor])  # type: ignore[arg-type]
    else:
        raise ModelError(f"adaptive pooling of {h}x{w} to {oh}x{ow} has uneven windows")


def _linear(r: _FxReader, node: fx.Node, m: nn.Linear) -> None:
    op = ops.Gemm(
        weight=f"{node.target}.weight",
        bias=f"{node.target}.bias" if m.bias is not None else None,
        in_features=m.in_features,
        out_features=m.out_features,
    )
    r.emit(node, op, [r._tensor(node.args[0], node.name)])


def _resize(r: _FxReader, node: fx.Node, source: fx.Node, mode: str, align_corners: bool | None, scale: Any) -> None:
    if mode not in ("nearest", "bilinear"):
        raise ModelError(f"interpolation mode {mode!r} is not supported (nearest and bilinear are)")
    _, _, h, w = r.shape(source)
    _, _, oh, ow = r.shape(node)
    scales = _scales(scale) if scale is not None else (oh / h, ow / w)
    if mode == "nearest":
        axes = [Resample(o, s, "nearest", "asymmetric", "floor") for o, s in zip((oh, ow), scales, strict=True)]
    else:
        coordinate = "align_corners" if align_corners else "pytorch_half_pixel"
        axes = [Resample(o, s, "linear", coordinate) for o, s in zip((oh, ow), scales, strict=True)]  # type: ignore[arg-type]
    r.emit(node, ops.Resize(rows=axes[0], cols=axes[1]), [r._tensor(source, node.name)])


def _scales(scale: Any) -> tuple[float, float]:
    if isinstance(scale, int | float):
        return float(scale), float(scale)
    return float(scale[0]), float(scale[1])


def _upsample(r: _FxReader, node: fx.Node, m: nn.Upsample) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    _resize(r, node, source, m.mode, m.align_corners, m.scale_factor)


def _shuffle(r: _FxReader, node: fx.Node, m: nn.PixelShuffle | nn.PixelUnshuffle) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    _space(r, node, source, m.upscale_factor if isinstance(m, nn.PixelShuffle) else -m.downscale_factor)


def _space(r: _FxReader, node: fx.Node, source: fx.Node, factor: int) -> None:
    """``factor`` > 0: pixel shuffle (depth to space, CRD); < 0: pixel unshuffle."""
    tensor = r._tensor(source, node.name)
    if factor > 0:
        r.emit(node, ops.DepthToSpace(block=factor, order="CRD"), [tensor])
    else:
        b, c = -factor, r.shape(source)[1]
        sources = tuple((ch, dy, dx) for ch in range(c) for dy in range(b) for dx in range(b))
        r.emit(node, ops.SpaceToDepth(block=b, sources=sources), [tensor])


def _pad_module(r: _FxReader, node: fx.Node, m: nn.ZeroPad2d | nn.ConstantPad2d) -> None:
    left, right, top, bottom = m.padding
    r.emit(node, ops.Pad(pads=(top, left, bottom, right), value=float(m.value)), [r._tensor(node.args[0], node.name)])


def _softmax_module(r: _FxReader, node: fx.Node, m: nn.Softmax) -> None:
    r.emit(node, ops.Softmax(axis=-1 if m.dim is None else int(m.dim)), [r._tensor(node.args[0], node.name)])


def _flatten_module(r: _FxReader, node: fx.Node, m: nn.Flatten) -> None:
    r.view(node)


_MODULES: dict[type, Callable[[_FxReader, fx.Node, Any], None]] = {
    nn.Conv2d: _conv,
    nn.BatchNorm2d: _batch_norm,
    nn.ReLU: _module_act(lambda m: ops.Activation(function="relu")),
    nn.ReLU6: _module_act(lambda m: ops.Activation(function="clip", low=0.0, high=6.0)),
    nn.Hardtanh: _module_act(lambda m: ops.Activation(function="clip", low=float(m.min_val), high=float(m.max_val))),
    nn.LeakyReLU: _module_act(lambda m: ops.Activation(function="leaky_relu", alpha=float(m.negative_slope))),
    nn.Sigmoid: _module_act(lambda m: ops.Activation(function="sigmoid")),
    nn.Hardsigmoid: _module_act(lambda m: ops.Activation(function="hard_sigmoid", alpha=1 / 6, beta=0.5)),
    nn.Hardswish: _module_act(lambda m: ops.Activation(function="hard_swish")),
    nn.SiLU: _module_act(lambda m: ops.Activation(function="silu")),
    nn.Tanh: _module_act(lambda m: ops.Activation(function="tanh")),
    nn.Identity: _alias,
    nn.Dropout: _alias,
    nn.Dropout2d: _alias,
    nn.MaxPool2d: _pool_module,
    nn.AvgPool2d: _pool_module,
    nn.AdaptiveAvgPool2d: lambda r, node, m: _adaptive(r, node, m.output_size, "avg"),
    nn.AdaptiveMaxPool2d: lambda r, node, m: _adaptive(r, node, m.output_size, "max"),
    nn.Linear: _linear,
    nn.Flatten: _flatten_module,
    nn.Upsample: _upsample,
    nn.PixelShuffle: _shuffle,
    nn.PixelUnshuffle: _shuffle,
    nn.ZeroPad2d: _pad_module,
    nn.ConstantPad2d: _pad_module,
    nn.Softmax: _softmax_module,
}


# --- functions and methods -------------------------------------------------------------------------


def _act(make: Callable[[fx.Node], ops.Activation]) -> Callable[[_FxReader, fx.Node], None]:
    def convert(r: _FxReader, node: fx.Node) -> None:
        r.emit(node, make(node), [r._tensor(node.args[0], node.name)])

    return convert


def _kw(node: fx.Node, name: str, position: int, default: Any) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[position] if len(node.args) > position else default


def _binary(function: str, swap: bool = False) -> Callable[[_FxReader, fx.Node], None]:
    def convert(r: _FxReader, node: fx.Node) -> None:
        a, b = node.args[0], node.args[1]
        if swap:
            a, b = b, a
        if node.kwargs.get("alpha", 1) != 1:
            raise ModelError("add or sub with a scaling alpha is not supported")
        operands = [r._tensor(a, f"{node.name}:a"), r._tensor(b, f"{node.name}:b")]
        r.emit(node, ops.Binary(function=function), operands)  # type: ignore[arg-type]

    return convert


def _cat(r: _FxReader, node: fx.Node) -> None:
    tensors = node.args[0]
    dim = int(_kw(node, "dim", 1, 0))
    assert isinstance(tensors, list | tuple)
    if dim % len(r.shape(node)) != 1:
        raise ModelError(f"concatenation along dimension {dim} (only channels, 1, keep maps tileable)")
    r.emit(node, ops.Concat(), [r._tensor(t, node.name) for t in tensors])


def _mean(r: _FxReader, node: fx.Node) -> None:
    dims = _kw(node, "dim", 1, None)
    source = node.args[0]
    assert isinstance(source, fx.Node)
    if dims is None or sorted(int(d) % 4 for d in (dims if isinstance(dims, list | tuple) else [dims])) != [2, 3]:
        raise ModelError(f"a mean over dimensions {dims} (only over height and width)")
    kept = f"{node.name}:kept" if not _kw(node, "keepdim", 2, False) else node.name
    r.graph.emit(kept, ops.GlobalPool(function="mean"), [r.graph.operand(source.name)], kept)
    if kept != node.name:
        r.graph.emit(node.name, ops.Reshape(shape=r.shape(node)), [kept], node.name)


def _interpolate(r: _FxReader, node: fx.Node) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    mode = str(_kw(node, "mode", 3, "nearest"))
    scale = r._arg(_kw(node, "scale_factor", 2, None))
    if _kw(node, "recompute_scale_factor", 5, None):
        scale = None
    if _kw(node, "antialias", 6, False):
        raise ModelError("antialiased interpolation is not supported")
    _resize(r, node, source, mode, r._arg(_kw(node, "align_corners", 4, None)), scale)


def _functional_pool(function: str) -> Callable[[_FxReader, fx.Node], None]:
    def convert(r: _FxReader, node: fx.Node) -> None:
        names = _POOL_ARGS[function]
        args = {name: r._arg(_kw(node, name, k + 1, None)) for k, name in enumerate(names)}
        r.emit(
            node,
            _pool(function, {k: v for k, v in args.items() if v is not None}),
            [r._tensor(node.args[0], node.name)],
        )

    return convert


def _functional_pad(r: _FxReader, node: fx.Node) -> None:
    pad = [int(p) for p in r._arg(node.args[1])]
    if str(_kw(node, "mode", 2, "constant")) != "constant" or len(pad) not in (2, 4) or min(pad) < 0:
        raise ModelError(f"padding {pad} is not constant padding of height and width")
    left, right, top, bottom = (*pad, 0, 0) if len(pad) == 2 else pad
    value = float(_kw(node, "value", 3, None) or 0.0)
    r.emit(node, ops.Pad(pads=(top, left, bottom, right), value=value), [r._tensor(node.args[0], node.name)])


def _permute(r: _FxReader, node: fx.Node) -> None:
    dims = [int(d) for d in (node.args[1:] if not isinstance(node.args[1], list | tuple) else node.args[1])]  # type: ignore[arg-type]
    r.view(node, [d % len(dims) for d in dims])


def _transpose(r: _FxReader, node: fx.Node) -> None:
    rank = len(r.shape(node))
    a, b = int(node.args[1]) % rank, int(node.args[2]) % rank  # type: ignore[arg-type]
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    r.view(node, perm)


def _softmax(r: _FxReader, node: fx.Node) -> None:
    r.emit(node, ops.Softmax(axis=int(_kw(node, "dim", 1, -1))), [r._tensor(node.args[0], node.name)])


def _functional_adaptive(function: str) -> Callable[[_FxReader, fx.Node], None]:
    return lambda r, node: _adaptive(r, node, r._arg(_kw(node, "output_size", 1, 1)), function)


def _shuffle_function(sign: int) -> Callable[[_FxReader, fx.Node], None]:
    def convert(r: _FxReader, node: fx.Node) -> None:
        source = node.args[0]
        assert isinstance(source, fx.Node)
        _space(r, node, source, sign * int(r._arg(node.args[1])))

    return convert


_RELU = _act(lambda n: ops.Activation(function="relu"))
_SIGMOID = _act(lambda n: ops.Activation(function="sigmoid"))
_FUNCTIONS: dict[Any, Callable[[_FxReader, fx.Node], None]] = {
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
    F.dropout: lambda r, node: _alias(r, node),
    "contiguous": lambda r, node: _alias(r, node),
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
