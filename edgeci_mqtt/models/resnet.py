"""ResNet-34 with torchvision's module layout, so its ImageNet ``state_dict`` loads as is."""

from __future__ import annotations

from torch import Tensor, nn

from edgeci_mqtt.models.tail_parts import TailParts

__all__ = ["BasicBlock", "ResNet", "resnet34"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (torchvision's ``BasicBlock``)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem, four stages of basic blocks, global average pool, FC."""

    def __init__(self, blocks_per_layer: tuple[int, int, int, int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for index, (width, count) in enumerate(zip((64, 128, 256, 512), blocks_per_layer, strict=True)):
            stride = 1 if index == 0 else 2
            layer = [BasicBlock(channels, width, stride)]
            layer += [BasicBlock(width, width) for _ in range(count - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def spatial_layers(self) -> list[tuple[str, nn.Module]]:
        stem = [(name, getattr(self, name)) for name in ("conv1", "bn1", "relu", "maxpool")]
        blocks = [(f"layer{i}.{j}", block) for i in range(1, 5) for j, block in enumerate(getattr(self, f"layer{i}"))]
        return stem + blocks

    def tail_parts(self) -> TailParts:
        """The tail as head, first fully connected layer, rest (for splitting it across devices)."""
        first = self.fc
        assert isinstance(first, nn.Linear)
        return TailParts(lambda x: self.avgpool(x).flatten(1), first, nn.Identity())

    def tail(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        for _, module in self.spatial_layers():
            x = module(x)
        return self.tail(x)


def resnet34(num_classes: int = 1000) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes)
