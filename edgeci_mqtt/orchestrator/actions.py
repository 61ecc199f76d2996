"""What an attempt asks its edge to do: the pure :class:`~edgeci_mqtt.orchestrator.attempt.Attempt`
returns these from each event, :class:`~edgeci_mqtt.orchestrator.attempt_edge.AttemptEdge`
carries them out in order. :class:`Restart`, :class:`Finish` and :class:`Fail` end the attempt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from numpy.typing import NDArray

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.orchestrator.programs import Answer, DeviceProgram, Forward

__all__ = [
    "Action",
    "Compute",
    "Fail",
    "Finish",
    "GiveUp",
    "Go",
    "Ignore",
    "Keep",
    "Release",
    "Restart",
    "SendProgram",
    "SendRows",
]


@dataclass(frozen=True)
class SendProgram:
    """Program ``program`` (the id the device keys it by and answers under) to ``device``,
    carrying the rows of the start boundary it reads (``carried``)."""

    program: str
    device: str
    work: DeviceProgram
    carried: Forward | None = None


@dataclass(frozen=True)
class SendRows:
    program: str
    forward: Forward


@dataclass(frozen=True)
class Keep:
    """Keep the array ``sender`` sent: a tile of a boundary's map (``region``) or an answer."""

    sender: str
    array: NDArray[Any] = field(compare=False)
    boundary: int = -1
    region: TileRegion | None = None
    answer: Answer | None = None


@dataclass(frozen=True)
class Compute:
    """The orchestrator runs ``block`` on the whole map it holds (then reports :class:`Computed`)."""

    block: FusedBlock


@dataclass(frozen=True)
class Go:
    program: str
    devices: tuple[str, ...]
    boundary: int


@dataclass(frozen=True)
class Release:
    """Tell devices to drop programs, given as (program id, device) pairs (``report``: and to
    say how far they got, which the attempt then hears)."""

    programs: tuple[tuple[str, str], ...]
    why: str
    report: bool = False


@dataclass(frozen=True)
class GiveUp:
    """This request uses these devices no more (``gone``: they left the device table, so
    nothing else needs to hold them out)."""

    devices: frozenset[str]
    why: str
    gone: bool = False


@dataclass(frozen=True)
class Ignore:
    sender: str
    why: str


@dataclass(frozen=True)
class Restart:
    """The attempt is over: re-plan without the devices given up, from ``boundary``."""

    boundary: int
    why: str
    late: bool = False


@dataclass(frozen=True)
class Finish:
    """Everything the request needs is here."""


@dataclass(frozen=True)
class Fail:
    reason: str


Action = SendProgram | SendRows | Keep | Compute | Go | Release | GiveUp | Ignore | Restart | Finish | Fail
