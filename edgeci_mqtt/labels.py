"""ImageNet class names and top-k readout of logits."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import torch
from torch import Tensor

__all__ = ["Prediction", "imagenet_labels", "top_k"]


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in torchvision's index order."""
    text = (files("edgeci_mqtt") / "data" / "imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


def top_k(logits: Tensor, k: int = 5) -> list[Prediction]:
    """The ``k`` most likely classes of one sample's logits (shape (1, classes) or (classes,))."""
    probs = torch.softmax(logits.reshape(-1).double(), dim=0)
    labels = imagenet_labels()
    values, indices = torch.topk(probs, min(k, probs.numel()))
    return [
        Prediction(int(i), labels[int(i)] if probs.numel() == len(labels) else f"class {int(i)}", float(v))
        for v, i in zip(values, indices, strict=True)
    ]
