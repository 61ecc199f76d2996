"""The CNNs EdgeCI can split, by name, with torchvision-compatible parameter names.

Two kinds: the hand-cut models of the paper's comparison (``vgg16``, ``resnet34``, and the
``smallcnn`` test network), whose chains are built layer by layer at any input size; and
the zoo (:mod:`edgeci_mqtt.models.zoo`), traced into a graph at one input size
(``size``, default 224) and cut where the graph allows (docs/GRAPH.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from edgeci_mqtt.errors import ModelError
from edgeci_mqtt.graph.fx_reader import read_module
from edgeci_mqtt.models.graph_model import GraphModel
from edgeci_mqtt.models.resnet import resnet34
from edgeci_mqtt.models.smallcnn import smallcnn
from edgeci_mqtt.models.stage_chain import StageChain, stage_chain
from edgeci_mqtt.models.vgg import vgg16
from edgeci_mqtt.models.weights import allocate, init_weights, load_weights
from edgeci_mqtt.models.zoo import ZOO, ZOO_SIZES

__all__ = [
    "HAND_CUT",
    "MODEL_NAMES",
    "ZOO_SIZE",
    "StageChain",
    "build_model",
    "load_chain",
    "model_size",
    "skeleton_chain",
    "stage_chain",
    "tail_separable",
]

_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "vgg16": vgg16,
    "resnet34": resnet34,
    "smallcnn": smallcnn,
}
HAND_CUT: tuple[str, ...] = tuple(_BUILDERS)
"""The paper's comparison models and the test network: what a device or an orchestrator
holds when no model is named."""
MODEL_NAMES: tuple[str, ...] = (*HAND_CUT, *ZOO)
ZOO_SIZE = 224
"""Input side a zoo model is traced at unless told."""


def build_model(name: str, weights: Path | None = None, seed: int = 0, tail: bool = True) -> nn.Module:
    """The model in eval mode: weights from ``weights`` or seeded random ones.

    Built on the meta device first so that the large VGG classifier is initialised
    once, not twice. Without ``tail``, its fully connected layers stay on the meta device
    (no memory: VGG-16's classifier is 470 MB), to be made when needed
    (:class:`~edgeci_mqtt.models.weights.TailSource`); every other weight is as with them.
    """
    if name in ZOO:  # small enough to build as is; the tail is always held
        model = ZOO[name]()
        init_weights(model, seed) if weights is None else load_weights(model, weights, name)
        return model.eval()
    if name not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    with torch.device("meta"):
        model = _BUILDERS[name]()
    allocate(model, leave=None if tail or not tail_separable(model) else nn.Linear)
    if weights is None:
        init_weights(model, seed)
    else:
        load_weights(model, weights, name)
    return model.eval()


def tail_separable(model: nn.Module) -> bool:
    """Whether the fully connected layers can be left out without changing anything else:
    they come after every convolution and batch norm (which are calibrated without them)."""
    modules = list(model.modules())
    linear = [i for i, m in enumerate(modules) if isinstance(m, nn.Linear)]
    weighted = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    return bool(linear) and (not weighted or min(linear) > max(weighted))


def skeleton_chain(name: str, size: int | None = None) -> StageChain:
    """The chain with every tensor on the meta device: geometry and costs, no memory.

    A device that fetches weights over the broker starts from this and materialises
    only the stages it is asked to run. (A zoo model is traced with seeded weights, which
    fetched stages replace: a few MB.)
    """
    if name in ZOO:
        return load_chain(name, size=size)
    if name not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    with torch.device("meta"):
        model = _BUILDERS[name]()
    return stage_chain(model.eval(), name)


def model_size(name: str) -> int:
    """The input side a model runs at unless told: a zoo model's traced size, else 224."""
    return ZOO_SIZES.get(name, ZOO_SIZE)


def load_chain(
    name: str, weights: Path | None = None, seed: int = 0, tail: bool = True, size: int | None = None
) -> StageChain:
    """Build the model and cut it into its stage chain (see :func:`build_model` for ``tail``);
    a zoo model is traced at ``size`` (default :data:`ZOO_SIZE`; the hand-cut ones take any)."""
    model = build_model(name, weights, seed, tail)
    if name in ZOO:
        side = size or model_size(name)
        graph, graph_weights = read_module(model, (side, side), name=name)
        return stage_chain(GraphModel(graph, graph_weights), name)
    return stage_chain(model, name)
