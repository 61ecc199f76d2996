"""ONNX files the import tests read: built node by node with ``onnx.helper`` (so they do not
depend on any exporter) or exported from small torch modules (so they look like what people
bring: shape sub-graphs, reshapes, opsets the exporters pick)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

__all__ = ["DarknetReorg", "TinyMobile", "TinySegmenter", "build_ops_model", "export", "save"]


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def save(graph: onnx.GraphProto, path: Path, opset: int = 13) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def build_ops_model(path: Path, seed: int = 0, opset: int = 13, dynamic: bool = False) -> Path:
    """Every supported op at least once, in one 16x16 network ending in a softmax.

    ``dynamic``: height and width are symbolic, and the resize takes its sizes from a
    ``Shape`` sub-graph (what exporters emit for ``interpolate(size=...)``)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(f32)

    inits = [
        _init("w1", r(8, 3, 3, 3)),
        _init("b1", r(8)),
        _init("bn_s", (rng.random(8) + 0.5).astype(f32)),
        _init("bn_b", r(8)),
        _init("bn_m", r(8)),
        _init("bn_v", (rng.random(8) + 0.5).astype(f32)),
        _init("lo", np.array(0.0, f32)),
        _init("hi", np.array(6.0, f32)),
        _init("wd", r(8, 1, 3, 3)),
        _init("se1", r(4, 8, 1, 1)),
        _init("se1b", r(4)),
        _init("se2", r(8, 4, 1, 1)),
        _init("se2b", r(8)),
        _init("scales", np.array([1, 1, 2, 2], f32)),
        _init("pads", np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64)),
        _init("shift", r(1, 16, 1, 1)),
        _init("two", np.array(2.0, f32)),
        _init("fc", r(10, 16)),
        _init("fcb", r(10)),
        _init("axes", np.array([2, 3], np.int64)),
        _init("hw", np.array([2], np.int64)),
        _init("end", np.array([4], np.int64)),
        _init("nc", np.array([1, 8], np.int64)),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], auto_pad="SAME_UPPER", strides=[2, 2]),
        n("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-3),
        n("Clip", ["bn", "lo", "hi"], ["r6"]),
        n("Conv", ["r6", "wd"], ["dw"], group=8, pads=[0, 1, 2, 1], kernel_shape=[3, 3]),
        n("Identity", ["dw"], ["dw_id"]),
        *(
            [n("HardSwish", ["dw_id"], ["hs"])]
            if opset >= 14  # HardSwish came in opset 14; before it, exporters wrote it out
            else [n("HardSigmoid", ["dw_id"], ["hsg"], alpha=1 / 6, beta=0.5), n("Mul", ["dw_id", "hsg"], ["hs"])]
        ),
        n("GlobalAveragePool", ["hs"], ["sq"]),
        n("Conv", ["sq", "se1", "se1b"], ["e1"]),
        n("Relu", ["e1"], ["e1r"]),
        n("Conv", ["e1r", "se2", "se2b"], ["e2"]),
        n("HardSigmoid", ["e2"], ["gate"], alpha=1 / 6, beta=0.5),
        n("Mul", ["hs", "gate"], ["se"]),
        n("Sigmoid", ["se"], ["sig"]),
        n("Mul", ["se", "sig"], ["silu"]),
        n("LeakyRelu", ["silu"], ["lr"], alpha=0.1),
        n("Dropout", ["lr"], ["dr"]),
        n("MaxPool", ["dr"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    if dynamic:
        nodes += [
            n("Shape", ["dr"], ["shape"]),
            n("Slice", ["shape", "hw", "end"], ["size_hw"]),
            n("Concat", ["nc", "size_hw"], ["sizes"], axis=0),
            n("Resize", ["mp", "", "", "sizes"], ["up"], mode="linear", coordinate_transformation_mode="half_pixel"),
        ]
    else:
        nodes.append(
            n(
                "Resize",
                ["mp", "", "scales"],
                ["up"],
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        )
    nodes += [
        n("Concat", ["up", "dr"], ["cat"], axis=1),
        n("Pad", ["cat", "pads"], ["pad"], mode="constant"),
        n("AveragePool", ["pad"], ["ap"], kernel_shape=[2, 2], strides=[1, 1], count_include_pad=1),
        n("Sub", ["ap", "shift"], ["sub"]),
        n("Div", ["sub", "two"], ["div"]),
        n("SpaceToDepth", ["div"], ["s2d"], blocksize=2),
        n("DepthToSpace", ["s2d"], ["d2s"], blocksize=2, mode="CRD"),
        n("Tanh", ["d2s"], ["th"]),
    ]
    if opset >= 18:
        nodes.append(n("ReduceMean", ["th", "axes"], ["mean"], keepdims=0))
    else:
        nodes.append(n("ReduceMean", ["th"], ["mean"], axes=[2, 3], keepdims=0))
    nodes += [
        n("Gemm", ["mean", "fc", "fcb"], ["logits"], transB=1),
        n("Softmax", ["logits"], ["probs"], axis=1),
    ]
    h, w = ("H", "W") if dynamic else (16, 16)
    graph = helper.make_graph(
        nodes,
        "ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, h, w])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10]),
            helper.make_tensor_value_info("th", TensorProto.FLOAT, None),
        ],
        inits,
    )
    return save(graph, path, opset)


class DarknetReorg(nn.Module):
    """YOLOv2's passthrough: a 2x2 reorg of an early map concatenated with a later one
    (written as Darknet's PyTorch ports write it: views and transposes)."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.1))
        self.late = nn.Sequential(nn.MaxPool2d(2, 2), nn.Conv2d(4, 6, 3, padding=1), nn.LeakyReLU(0.1))
        self.head = nn.Conv2d(6 + 16, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.early(x)
        b, c, h, w, s = 1, 4, e.shape[2], e.shape[3], 2
        r = e.view(b, c, h // s, s, w // s, s).transpose(3, 4).contiguous()
        r = r.view(b, c, h // s * w // s, s * s).transpose(2, 3).contiguous()
        r = r.view(b, c, s * s, h // s, w // s).transpose(1, 2).contiguous().view(b, s * s * c, h // s, w // s)
        return self.head(torch.cat([self.late(e), r], dim=1))


class TinySegmenter(nn.Module):
    """A U-Net-like segmenter with a squeeze-excitation block: skips at two scales,
    bilinear upsampling, and a map as its output."""

    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.down2 = nn.Sequential(
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Conv2d(8, 12, 1), nn.Hardswish()
        )
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(12, 4, 1), nn.SiLU(), nn.Conv2d(4, 12, 1), nn.Sigmoid()
        )
        self.up = nn.Conv2d(12 + 8, 4, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.down1(x)
        b = self.down2(a)
        b = b * self.se(b)
        u = nn.functional.interpolate(b, size=a.shape[2:], mode="bilinear", align_corners=False)
        return self.up(torch.cat([u, a], dim=1))


def export(module: nn.Module, path: Path, size: tuple[int, int], dynamo: bool = False) -> Path:
    """``module`` in eval mode with seeded batch-norm statistics, exported to ``path``."""
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    module.eval()
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(module, (torch.randn(1, 3, *size),), str(path), dynamo=dynamo, opset_version=17)
    return path


class _InvertedResidual(nn.Module):
    """MobileNetV3's block: expand, depthwise, squeeze-excitation, project (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 3) -> None:
        super().__init__()
        mid = cin * expand
        self.skip = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.Hardswish(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Hardswish(),
        )
        self.squeeze = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, 4, 1), nn.ReLU(), nn.Conv2d(4, mid, 1), nn.Hardsigmoid()
        )
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        y = self.project(y * self.squeeze(y))
        return x + y if self.skip else y


class TinyMobile(nn.Module):
    """A MobileNetV3-like classifier: stem, inverted residuals with squeeze-excitation,
    a 1x1 head, global pooling and a two-layer classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False),
            nn.BatchNorm2d(8),
            nn.Hardswish(),
            _InvertedResidual(8, 8, 1),
            _InvertedResidual(8, 12, 2),
            _InvertedResidual(12, 12, 1),
            nn.Conv2d(12, 24, 1),
            nn.ReLU6(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(24, 16), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
