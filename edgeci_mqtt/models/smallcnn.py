"""``smallcnn``: a tiny network for fast tests that still exercises every stage kind.

It has what VGG-16 and ResNet-34 have (conv, BN, ReLU, max pool, identity and
downsampling residual blocks) plus the geometry they lack: dilation, ceil-mode
pooling, average pooling with and without counted padding, a non-square kernel and
unequal row/column strides.
"""

from __future__ import annotations

from torch import Tensor, nn

from edgeci_mqtt.models.resnet import BasicBlock
from edgeci_mqtt.models.tail_parts import TailParts

__all__ = ["SmallCNN", "smallcnn"]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
            nn.Conv2d(8, 16, 3, padding=2, dilation=2),
            nn.ReLU(inplace=True),
            BasicBlock(16, 16),
            BasicBlock(16, 24, stride=2),
            nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),
            nn.Conv2d(24, 32, (3, 5), stride=(2, 1), padding=(1, 2)),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, num_classes)

    def spatial_layers(self) -> list[tuple[str, nn.Module]]:
        return [(f"features.{i}", m) for i, m in enumerate(self.features)]

    def tail_parts(self) -> TailParts:
        """The tail as head, first fully connected layer, rest (for splitting it across devices)."""
        first = self.fc
        assert isinstance(first, nn.Linear)
        return TailParts(lambda x: self.avgpool(x).flatten(1), first, nn.Identity())

    def tail(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.features(x))


def smallcnn(num_classes: int = 1000) -> SmallCNN:
    return SmallCNN(num_classes)
