"""PyTorch modules as graph ops, by class (and the steps functions share with them).

Each converter is given what the reader knows (:class:`Tracing`: the graph being built, each
node's recorded value) and one ``call_module`` node, and emits its op or refuses with why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
from torch import fx, nn

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph import ops
from edgeci_mqtt.graph.axes import Resample
from edgeci_mqtt.graph.builder import GraphBuilder

__all__ = ["MODULES", "Tracing"]


class Tracing(Protocol):
    """What a converter may ask of the reader."""

    graph: GraphBuilder

    def arg(self, value: Any) -> Any:
        """A node argument as a concrete value (a node of a non-tensor is a constant here)."""
        ...

    def tensor(self, value: Any, label: str) -> str:
        """A tensor operand's name (a Python number becomes a named constant)."""
        ...

    def emit(self, node: fx.Node, op: ops.Op, operands: list[str]) -> None: ...

    def shape(self, node: fx.Node) -> tuple[int, ...]: ...

    def view(self, node: fx.Node, perm: list[int] | None = None) -> None: ...


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


def _conv(r: Tracing, node: fx.Node, m: nn.Conv2d) -> None:
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
    r.emit(node, op, [r.tensor(node.args[0], node.name)])


def _batch_norm(r: Tracing, node: fx.Node, m: nn.BatchNorm2d) -> None:
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
    r.emit(node, op, [r.tensor(node.args[0], node.name)])


def _module_act(make: Callable[[Any], ops.Activation]) -> Callable[[Tracing, fx.Node, Any], None]:
    def convert(r: Tracing, node: fx.Node, m: Any) -> None:
        r.emit(node, make(m), [r.tensor(node.args[0], node.name)])

    return convert


def alias(r: Tracing, node: fx.Node, m: Any = None) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    r.graph.alias(node.name, source.name)


POOL_ARGS = {
    "max": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
}
"""PyTorch's pooling arguments, in the order ``F.max_pool2d`` and ``F.avg_pool2d`` take them."""


def pool(function: str, args: Mapping[str, Any]) -> ops.Pool:
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


def _pool_module(r: Tracing, node: fx.Node, m: nn.MaxPool2d | nn.AvgPool2d) -> None:
    function = "max" if isinstance(m, nn.MaxPool2d) else "avg"
    op = pool(function, {name: getattr(m, name) for name in POOL_ARGS[function]})
    r.emit(node, op, [r.tensor(node.args[0], node.name)])


def adaptive(r: Tracing, node: fx.Node, out_size: Any, function: str) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    _, _, h, w = r.shape(source)
    oh, ow = _pair(out_size) if out_size is not None else (h, w)
    oh, ow = (h if oh is None else oh), (w if ow is None else ow)
    tensor = r.tensor(source, node.name)
    if (oh, ow) == (1, 1):
        r.emit(node, ops.GlobalPool(function="mean" if function == "avg" else "max"), [tensor])
    elif (oh, ow) == (h, w):
        r.graph.alias(node.name, tensor)
    elif h % oh == 0 and w % ow == 0:
        kernel = (h // oh, w // ow)
        r.emit(node, ops.Pool(function=function, kernel=kernel, stride=kernel), [tensor])  # type: ignore[arg-type]
    else:
        raise ModelError(f"adaptive pooling of {h}x{w} to {oh}x{ow} has uneven windows")


def _linear(r: Tracing, node: fx.Node, m: nn.Linear) -> None:
    op = ops.Gemm(
        weight=f"{node.target}.weight",
        bias=f"{node.target}.bias" if m.bias is not None else None,
        in_features=m.in_features,
        out_features=m.out_features,
    )
    r.emit(node, op, [r.tensor(node.args[0], node.name)])


def resize(r: Tracing, node: fx.Node, source: fx.Node, mode: str, align_corners: bool | None, scale: Any) -> None:
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
    r.emit(node, ops.Resize(rows=axes[0], cols=axes[1]), [r.tensor(source, node.name)])


def _scales(scale: Any) -> tuple[float, float]:
    if isinstance(scale, int | float):
        return float(scale), float(scale)
    return float(scale[0]), float(scale[1])


def _upsample(r: Tracing, node: fx.Node, m: nn.Upsample) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    resize(r, node, source, m.mode, m.align_corners, m.scale_factor)


def _shuffle(r: Tracing, node: fx.Node, m: nn.PixelShuffle | nn.PixelUnshuffle) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    space(r, node, source, m.upscale_factor if isinstance(m, nn.PixelShuffle) else -m.downscale_factor)


def space(r: Tracing, node: fx.Node, source: fx.Node, factor: int) -> None:
    """``factor`` > 0: pixel shuffle (depth to space, CRD); < 0: pixel unshuffle."""
    tensor = r.tensor(source, node.name)
    if factor > 0:
        r.emit(node, ops.DepthToSpace(block=factor, order="CRD"), [tensor])
    else:
        b, c = -factor, r.shape(source)[1]
        sources = tuple((ch, dy, dx) for ch in range(c) for dy in range(b) for dx in range(b))
        r.emit(node, ops.SpaceToDepth(block=b, sources=sources), [tensor])


def _pad_module(r: Tracing, node: fx.Node, m: nn.ZeroPad2d | nn.ConstantPad2d) -> None:
    left, right, top, bottom = m.padding
    r.emit(node, ops.Pad(pads=(top, left, bottom, right), value=float(m.value)), [r.tensor(node.args[0], node.name)])


def _softmax_module(r: Tracing, node: fx.Node, m: nn.Softmax) -> None:
    r.emit(node, ops.Softmax(axis=-1 if m.dim is None else int(m.dim)), [r.tensor(node.args[0], node.name)])


def _flatten_module(r: Tracing, node: fx.Node, m: nn.Flatten) -> None:
    r.view(node)


MODULES: dict[type, Callable[[Tracing, fx.Node, Any], None]] = {
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
    nn.Identity: alias,
    nn.Dropout: alias,
    nn.Dropout2d: alias,
    nn.MaxPool2d: _pool_module,
    nn.AvgPool2d: _pool_module,
    nn.AdaptiveAvgPool2d: lambda r, node, m: adaptive(r, node, m.output_size, "avg"),
    nn.AdaptiveMaxPool2d: lambda r, node, m: adaptive(r, node, m.output_size, "max"),
    nn.Linear: _linear,
    nn.Flatten: _flatten_module,
    nn.Upsample: _upsample,
    nn.PixelShuffle: _shuffle,
    nn.PixelUnshuffle: _shuffle,
    nn.ZeroPad2d: _pad_module,
    nn.ConstantPad2d: _pad_module,
    nn.Softmax: _softmax_module,
}
