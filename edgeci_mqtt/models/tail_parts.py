"""A model's tail cut where the planner may split it: head, first fully connected layer, rest.

See :mod:`edgeci_mqtt.planner.tail` for why the first layer is the one split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn import functional

from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.errors import ModelError

__all__ = ["TailParts"]


@dataclass(frozen=True)
class TailParts:
    head: Callable[[Tensor], Tensor]
    """Global pooling and flatten: the final map to one vector."""
    first: nn.Linear
    rest: nn.Module
    """Everything after the first layer (an identity when it is the last)."""

    @property
    def features(self) -> int:
        return self.first.out_features

    @property
    def classes(self) -> int:
        """How many logits the tail makes: the last fully connected layer's outputs (known
        without running anything, even for layers left on the meta device)."""
        linear = [m for m in self.rest.modules() if isinstance(m, nn.Linear)]
        return (linear[-1] if linear else self.first).out_features

    def whole(self, x: Tensor) -> Tensor:
        return self.rest(self.first(self.head(x)))

    def part(self, x: Tensor, features: Span) -> Tensor:
        """The first layer's output ``features`` from the final map (its weight rows only)."""
        if not 0 <= features.start < features.stop <= self.features:
            raise ModelError(f"features {features} are not within the first layer's {self.features}")
        bias = self.first.bias[features.start : features.stop] if self.first.bias is not None else None
        return functional.linear(self.head(x), self.first.weight[features.start : features.stop], bias)

    def finish(self, first_out: Tensor) -> Tensor:
        """The logits from the first layer's whole output."""
        return self.rest(first_out)
