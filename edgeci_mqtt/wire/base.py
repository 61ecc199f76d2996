"""What every message shares: its base class and the field types that bound what it may carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar

from numpy.typing import NDArray

from edgeci_mqtt.wire.values import Id, MaxLen, Range

__all__ = [
    "CONTENT_TYPE",
    "MAX_INPUT_SIDE",
    "MAX_ITEMS_PER_ROUND",
    "MAX_LOTS",
    "MAX_SECONDS",
    "Array",
    "Ident",
    "ImageSize",
    "M",
    "Message",
    "Name",
    "Prices",
    "Seconds",
    "Side",
    "Text",
    "WallClock",
]

CONTENT_TYPE = "application/vnd.edgeci.v1+msgpack"
"""MQTT v5 content type of every payload, so generic tools can tell them apart."""

MAX_INPUT_SIDE = 8192
MAX_ITEMS_PER_ROUND = 4096
MAX_LOTS = 64
"""Blocks in one auction round (a plan has at most one per stage: VGG-16 has 31)."""

Ident = Annotated[str, Id]
"""Ids travel in topics and logs: one topic segment of printable characters."""
Name = Annotated[str, MaxLen(128)]
Text = Annotated[str, MaxLen(4096)]
MAX_SECONDS = 1e6
"""The longest duration a message may carry (about 11.6 days)."""
Seconds = Annotated[float, Range(0.0, MAX_SECONDS)]
WallClock = Annotated[float, Range(0.0, 1e11)]
Side = Annotated[int, Range(1, MAX_INPUT_SIDE)]
ImageSize = tuple[Side, Side]
Prices = Annotated[tuple[Seconds, ...], MaxLen(MAX_ITEMS_PER_ROUND)]
Array = NDArray[Any]


@dataclass(frozen=True)
class Message:
    """Base of every message: a ``type`` tag and typed fields."""

    kind: ClassVar[str] = ""


M = TypeVar("M", bound=Message)
