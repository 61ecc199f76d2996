"""The networks people run on boards and cameras, with torchvision's module layout.

Each class builds the same modules under the same names as torchvision's model of that
name, so a torchvision ``state_dict`` loads with ``strict=True`` (the parameter counts are
pinned by a test against torchvision's published ones). They are plain modules: the
project splits them by tracing them into a graph (:mod:`edgeci_mqtt.graph.fx_reader`), not
by cutting them by hand.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "ZOO",
    "ZOO_SIZES",
    "efficientnet_b0",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "regnet_y_400mf",
    "resnet18",
    "resnet50",
    "yolov2",
]

Layer = Callable[..., nn.Module]


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: to a multiple of ``divisor``, never 10 % below ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class ConvNormActivation(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: ``0`` conv (no bias), ``1`` batch norm, ``2`` activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: Layer | None = nn.ReLU,
        eps: float = 1e-5,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=eps),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation``: a per-channel gate from the map's global mean."""

    def __init__(self, channels: int, squeeze: int, activation: Layer = nn.ReLU, scale: Layer = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = activation()
        self.scale_activation = scale()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


class _Classifier(nn.Module):
    """``features``, global average pooling, flatten, ``classifier`` (torchvision's layout)."""

    features: nn.Module
    classifier: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


# --- MobileNetV2 -------------------------------------------------------------------------------------


class _InvertedResidualV2(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormActivation(cin, hidden, 1, activation=nn.ReLU6))
        layers += [
            ConvNormActivation(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(_Classifier):
    SETTING = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    """(expansion, channels, blocks, first stride) per stage."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvNormActivation(3, 32, 3, 2, activation=nn.ReLU6)]
        cin = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(_InvertedResidualV2(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvNormActivation(cin, 1280, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))


# --- MobileNetV3-Large -------------------------------------------------------------------------------


class _InvertedResidualV3(nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hardswish: bool, stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        act: Layer = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvNormActivation(cin, expanded, 1, activation=act, eps=0.001))
        layers.append(
            ConvNormActivation(expanded, expanded, kernel, stride, groups=expanded, activation=act, eps=0.001)
        )
        if se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8), scale=nn.Hardsigmoid))
        layers.append(ConvNormActivation(expanded, cout, 1, activation=None, eps=0.001))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


class MobileNetV3(_Classifier):
    LARGE = (
        (16, 3, 16, 16, False, False, 1),
        (16, 3, 64, 24, False, False, 2),
        (24, 3, 72, 24, False, False, 1),
        (24, 5, 72, 40, True, False, 2),
        (40, 5, 120, 40, True, False, 1),
        (40, 5, 120, 40, True, False, 1),
        (40, 3, 240, 80, False, True, 2),
        (80, 3, 200, 80, False, True, 1),
        (80, 3, 184, 80, False, True, 1),
        (80, 3, 184, 80, False, True, 1),
        (80, 3, 480, 112, True, True, 1),
        (112, 3, 672, 112, True, True, 1),
        (112, 5, 672, 160, True, True, 2),
        (160, 5, 960, 160, True, True, 1),
        (160, 5, 960, 160, True, True, 1),
    )
    """(in, kernel, expanded, out, squeeze-excitation, hard swish, stride) per block."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvNormActivation(3, 16, 3, 2, activation=nn.Hardswish, eps=0.001)]
        layers += [_InvertedResidualV3(*setting) for setting in self.LARGE]
        layers.append(ConvNormActivation(160, 960, 1, activation=nn.Hardswish, eps=0.001))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(960, 1280), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1280, num_classes)
        )


# --- EfficientNet-B0 ---------------------------------------------------------------------------------


class _MBConv(nn.Module):
    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = _make_divisible(cin * expand, 8)
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvNormActivation(cin, expanded, 1, activation=nn.SiLU))
        layers.append(ConvNormActivation(expanded, expanded, kernel, stride, groups=expanded, activation=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), activation=nn.SiLU))
        layers.append(ConvNormActivation(expanded, cout, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # stochastic depth is the identity in inference
        return x + self.block(x) if self.use_res_connect else self.block(x)


class EfficientNet(_Classifier):
    B0 = (
        (1, 3, 1, 32, 16, 1),
        (6, 3, 2, 16, 24, 2),
        (6, 5, 2, 24, 40, 2),
        (6, 3, 2, 40, 80, 3),
        (6, 5, 1, 80, 112, 3),
        (6, 5, 2, 112, 192, 4),
        (6, 3, 1, 192, 320, 1),
    )
    """(expansion, kernel, first stride, in, out, blocks) per stage."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvNormActivation(3, 32, 3, 2, activation=nn.SiLU)]
        for expand, kernel, stride, cin, cout, n in self.B0:
            layers.append(
                nn.Sequential(
                    *(_MBConv(expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout) for i in range(n))
                )
            )
        layers.append(ConvNormActivation(320, 1280, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))


# --- ResNet-18 / ResNet-50 -----------------------------------------------------------------------------


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(cin, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, width * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    def __init__(self, block: type[_Basic | _Bottleneck], layers: tuple[int, ...], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for index, (width, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for i in range(count):
                blocks.append(block(cin, width, 2 if i == 0 and index > 0 else 1))
                cin = width * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- RegNetY-400MF -----------------------------------------------------------------------------------


class _BottleneckTransform(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int, se_ratio: float) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["a"] = ConvNormActivation(cin, cout, 1)
        layers["b"] = ConvNormActivation(cout, cout, 3, stride, groups=cout // group_width)
        layers["se"] = SqueezeExcitation(cout, round(se_ratio * cin))
        layers["c"] = ConvNormActivation(cout, cout, 1, activation=None)
        super().__init__(layers)


class _ResBottleneckBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int, se_ratio: float) -> None:
        super().__init__()
        self.proj = ConvNormActivation(cin, cout, 1, stride, activation=None) if cin != cout or stride != 1 else None
        self.f = _BottleneckTransform(cin, cout, stride, group_width, se_ratio)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation((x if self.proj is None else self.proj(x)) + self.f(x))


class RegNet(nn.Module):
    Y_400MF = ((48, 1), (104, 3), (208, 6), (440, 6))
    """(width, blocks) per stage, as torchvision derives them for RegNetY-400MF (group width 8,
    bottleneck ratio 1, squeeze-excitation ratio 0.25, every stage stride 2)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvNormActivation(3, 32, 3, 2)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        cin = 32
        for index, (width, depth) in enumerate(self.Y_400MF, start=1):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(depth):
                blocks[f"block{index}-{i}"] = _ResBottleneckBlock(cin, width, 2 if i == 0 else 1, 8, 0.25)
                cin = width
            stages[f"block{index}"] = nn.Sequential(blocks)
        self.trunk_output = nn.Sequential(stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.trunk_output(self.stem(x))), 1))


# --- YOLOv2 ------------------------------------------------------------------------------------------


def _darknet(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Darknet's convolutional layer: convolution without bias, batch norm, leaky ReLU (0.1)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)
    )


def reorg(x: Tensor, stride: int = 2) -> Tensor:
    """Darknet's ``reorg`` layer as its PyTorch ports write it: each ``stride`` x ``stride`` cell
    of the map becomes channels, in Darknet's order (a space-to-depth with its own channel table)."""
    b, c, h, w = x.size()
    x = x.view(b, c, h // stride, stride, w // stride, stride).transpose(3, 4).contiguous()
    x = x.view(b, c, h // stride * (w // stride), stride * stride).transpose(2, 3).contiguous()
    x = x.view(b, c, stride * stride, h // stride, w // stride).transpose(1, 2).contiguous()
    return x.view(b, stride * stride * c, h // stride, w // stride)


class YOLOv2(nn.Module):
    """YOLOv2 (``yolov2.cfg``, COCO): Darknet-19's 16 first layers (``early``: conv/pool, the
    passthrough's source), the rest of the backbone (``late``), the passthrough (a 1x1
    convolution and a reorg), their concatenation and the detection head. The output is the
    raw region map, ``anchors * (5 + classes)`` channels at 1/32 of the input (19x19 at 608);
    decoding it into boxes is the tail's job."""

    EARLY = (
        (32, 3),
        "M",
        (64, 3),
        "M",
        (128, 3),
        (64, 1),
        (128, 3),
        "M",
        (256, 3),
        (128, 1),
        (256, 3),
        "M",
        (512, 3),
        (256, 1),
        (512, 3),
        (256, 1),
        (512, 3),
    )
    LATE: tuple[tuple[int, int] | str, ...] = (
        "M",
        (1024, 3),
        (512, 1),
        (1024, 3),
        (512, 1),
        (1024, 3),
        (1024, 3),
        (1024, 3),
    )

    def __init__(self, classes: int = 80, anchors: int = 5) -> None:
        super().__init__()
        self.early, cin = self._layers(self.EARLY, 3)
        self.late, _ = self._layers(self.LATE, cin)
        self.passthrough = _darknet(512, 64, 1)
        self.head = nn.Sequential(_darknet(64 * 4 + 1024, 1024, 3), nn.Conv2d(1024, anchors * (5 + classes), 1))

    @staticmethod
    def _layers(spec: tuple[tuple[int, int] | str, ...], cin: int) -> tuple[nn.Sequential, int]:
        layers: list[nn.Module] = []
        for item in spec:
            if isinstance(item, str):  # "M": a 2x2 max pool
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(_darknet(cin, item[0], item[1]))
                cin = item[0]
        return nn.Sequential(*layers), cin

    def forward(self, x: Tensor) -> Tensor:
        early = self.early(x)
        return self.head(torch.cat([reorg(self.passthrough(early)), self.late(early)], dim=1))


def yolov2() -> nn.Module:
    return YOLOv2()


def mobilenet_v2() -> nn.Module:
    return MobileNetV2()


def mobilenet_v3_large() -> nn.Module:
    return MobileNetV3()


def efficientnet_b0() -> nn.Module:
    return EfficientNet()


def resnet18() -> nn.Module:
    return ResNet(_Basic, (2, 2, 2, 2))


def resnet50() -> nn.Module:
    return ResNet(_Bottleneck, (3, 4, 6, 3))


def regnet_y_400mf() -> nn.Module:
    return RegNet()


ZOO: dict[str, Callable[[], nn.Module]] = {
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "efficientnet_b0": efficientnet_b0,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "regnet_y_400mf": regnet_y_400mf,
    "yolov2": yolov2,
}
"""The zoo by name: each a torchvision-compatible module (YOLOv2: Darknet's layout), split
through the graph importer."""
ZOO_SIZES = {"yolov2": 608}
"""Input sides the zoo models are traced at where it is not 224: YOLOv2 at 608, as DeepThings
and AOFL measured it."""
