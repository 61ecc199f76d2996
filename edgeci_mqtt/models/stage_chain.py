"""Cut a model into its chain of spatial stages and its non-spatial tail."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from torch import Tensor, nn

from edgeci_mqtt.core.chain import ChainSpec, chain_shapes
from edgeci_mqtt.core.geometry import FeatureShape
from edgeci_mqtt.core.kernels import (
    AvgPoolKernel,
    BatchNormKernel,
    ConvKernel,
    Kernel,
    MaxPoolKernel,
    ReLUKernel,
    ResidualKernel,
)
from edgeci_mqtt.core.stages import BYTES_PER_ELEMENT, Stage
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import GeometryError, InputError, ModelError
from edgeci_mqtt.models.graph_model import GraphBlock, GraphKernel, GraphModel
from edgeci_mqtt.models.resnet import BasicBlock
from edgeci_mqtt.models.tail_parts import TailParts

__all__ = ["SpatialModel", "StageChain", "kernel_of", "stage_chain"]

SPECS_KEPT = 16
"""Input sizes a chain remembers its spec for."""


class SpatialModel(Protocol):
    """What a model offers to be split: its spatial layers in order, and its tail."""

    def spatial_layers(self) -> list[tuple[str, nn.Module]]: ...

    def tail(self, x: Tensor) -> Tensor: ...

    def tail_parts(self) -> TailParts | None: ...


@dataclass(frozen=True)
class StageChain:
    """A model as stages ``0..n-1`` (spatial, tileable) followed by ``tail``.

    ``kernels`` run the stages with the model's weights; :attr:`stages` is their
    geometry, and :meth:`spec` all the planner needs at one input size.
    """

    model_name: str
    model: nn.Module
    kernels: tuple[Kernel, ...]
    in_channels: int

    def __len__(self) -> int:
        return len(self.kernels)

    @cached_property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(k.stage for k in self.kernels)

    def tail(self, x: Tensor) -> Tensor:
        """The non-spatial rest of the model (global pool, flatten, FC)."""
        spatial: SpatialModel = self.model  # type: ignore[assignment]
        return spatial.tail(x)

    @cached_property
    def tail_parts(self) -> TailParts | None:
        """The tail as head, first fully connected layer and rest (:mod:`edgeci_mqtt.planner.tail`);
        None when it has no fully connected layer to split (a model whose output is a map)."""
        spatial: SpatialModel = self.model  # type: ignore[assignment]
        return spatial.tail_parts()

    def split_tail(self) -> TailParts:
        """:attr:`tail_parts`, for work that splits the tail (an error for a model without one)."""
        if self.tail_parts is None:
            raise ModelError(f"{self.model_name} has no fully connected tail to split: its output is a map")
        return self.tail_parts

    @cached_property
    def output_size(self) -> int:
        """How many values an answer holds: the logits, or every value of an output map."""
        if self.tail_parts is not None:
            return self.tail_parts.classes
        size: int = self.model.output_size  # type: ignore[assignment]
        return size

    def tail_modules(self) -> list[str]:
        """Top-level modules that belong to the tail rather than to any stage."""
        prefixes = {stage.name.split(".")[0] for stage in self.stages}
        return [name for name, _ in self.model.named_children() if name not in prefixes]

    def shapes(self, height: int, width: int) -> list[FeatureShape]:
        """Shapes at every stage boundary for a ``height`` x ``width`` image."""
        try:
            return chain_shapes(self.stages, FeatureShape(self.in_channels, height, width))
        except GeometryError as exc:
            raise InputError(f"{self.model_name}: {exc}") from exc

    def spec(self, height: int, width: int, densities: tuple[float, ...] = ()) -> ChainSpec:
        """The chain at a ``height`` x ``width`` input, as the planner and simulator take it
        (``densities``: measured shares of non-zeros, :func:`edgeci_mqtt.profiling.map_densities`).

        Remembered per size: the planner remembers work by the spec's parts, which are
        then the same objects from one request to the next."""
        key = (height, width, densities)
        spec = self._specs.get(key)
        if spec is None:
            shapes = tuple(self.shapes(height, width))
            spec = ChainSpec(self.model_name, self.stages, shapes, tuple(self.tail_ops(shapes[-1])), densities)
            if len(self._specs) >= SPECS_KEPT:
                self._specs.clear()
            self._specs[key] = spec
        return spec

    @cached_property
    def _specs(self) -> dict[tuple[int, int, tuple[float, ...]], ChainSpec]:
        return {}

    def tail_ops(self, features: FeatureShape) -> list[OpWork]:
        """The tail's work for a final feature map of shape ``features``.

        Fully connected layers are priced by the bytes of their weights (a batch of
        one makes them matrix-vector products, bound by memory); global pooling by
        the bytes it reads.
        """
        ops: list[OpWork] = []
        size = features.numel
        for name in self.tail_modules():
            module = getattr(self.model, name)
            for leaf in module.modules():
                if isinstance(leaf, nn.Linear):
                    weights = leaf.in_features * leaf.out_features
                    moved = (weights + leaf.in_features + 2 * leaf.out_features) * BYTES_PER_ELEMENT
                    ops.append(OpWork("fc", 2 * weights, moved, leaf.in_features, 1))
                    size = leaf.out_features
                elif isinstance(leaf, nn.AdaptiveAvgPool2d):
                    rows, cols = _pair_of(leaf.output_size, features)
                    out = features.channels * rows * cols
                    ops.append(OpWork("add", size, (size + out) * BYTES_PER_ELEMENT, 0, rows * cols))
                    size = out
        return ops

    def check_input(self, x: Tensor) -> list[FeatureShape]:
        """Validate a (1, C, H, W) input and return the shapes it flows through."""
        if x.dim() != 4 or x.shape[0] != 1:
            raise InputError(f"expected one image as a (1, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InputError(f"{self.model_name} takes {self.in_channels} input channels, got {x.shape[1]}")
        return self.shapes(int(x.shape[2]), int(x.shape[3]))


def _pair_of(size: object, features: FeatureShape) -> tuple[int, int]:
    """An adaptive pool's output size; ``None`` entries keep the input size."""
    rows, cols = size if isinstance(size, tuple) else (size, size)
    return (features.height if rows is None else int(rows)), (features.width if cols is None else int(cols))


def kernel_of(name: str, module: nn.Module) -> Kernel:
    """The stage (and what runs it) for one spatial layer of a model."""
    if isinstance(module, nn.Conv2d):
        return ConvKernel(name, module)
    if isinstance(module, nn.BatchNorm2d):
        return BatchNormKernel(name, module)
    if isinstance(module, nn.ReLU):
        return ReLUKernel(name)
    if isinstance(module, nn.MaxPool2d):
        return MaxPoolKernel(name, module)
    if isinstance(module, nn.AvgPool2d):
        return AvgPoolKernel(name, module)
    if isinstance(module, GraphBlock):
        return GraphKernel(name, module)
    if isinstance(module, BasicBlock):
        main = [kernel_of(f"{name}.{part}", getattr(module, part)) for part in ("conv1", "bn1", "relu", "conv2", "bn2")]
        shortcut = []
        if module.downsample is not None:
            shortcut = [kernel_of(f"{name}.downsample.{i}", m) for i, m in enumerate(module.downsample)]
        return ResidualKernel(name, main, shortcut)
    raise ModelError(f"{name}: layer type {type(module).__name__} is not a supported spatial stage")


def stage_chain(model: nn.Module, name: str) -> StageChain:
    """Cut ``model`` (which must offer ``spatial_layers`` and ``tail``) into a chain."""
    if not hasattr(model, "spatial_layers") or not hasattr(model, "tail"):
        raise ModelError(f"{name}: the model does not expose spatial_layers() and tail()")
    spatial: SpatialModel = model  # type: ignore[assignment]
    kernels = tuple(kernel_of(n, m) for n, m in spatial.spatial_layers())
    if isinstance(model, GraphModel):
        return StageChain(name, model, kernels, model.in_channels)
    first = next((k for k in kernels if isinstance(k, ConvKernel)), None)
    if first is None:
        raise ModelError(f"{name}: no convolution found to fix the input channels")
    return StageChain(name, model, kernels, first.stage.in_channels)
