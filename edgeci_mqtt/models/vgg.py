"""VGG-16 with torchvision's module layout, so its ImageNet ``state_dict`` loads as is."""

from __future__ import annotations

from torch import Tensor, nn

from edgeci_mqtt.models.tail_parts import TailParts

__all__ = ["VGG", "vgg16"]

VGG16_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG(nn.Module):
    """``features`` (conv/ReLU/max-pool, all spatial stages) then the classifier tail."""

    def __init__(self, config: tuple[int | str, ...] = VGG16_CONFIG, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes),
        )

    def spatial_layers(self) -> list[tuple[str, nn.Module]]:
        return [(f"features.{i}", m) for i, m in enumerate(self.features)]

    def tail_parts(self) -> TailParts:
        """The tail as head, first fully connected layer, rest (for splitting it across devices)."""
        first = self.classifier[0]
        assert isinstance(first, nn.Linear)
        return TailParts(lambda x: self.avgpool(x).flatten(1), first, self.classifier[1:])

    def tail(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.features(x))


def vgg16(num_classes: int = 1000) -> VGG:
    return VGG(VGG16_CONFIG, num_classes)
