"""A strategy as a value: its name and, for ``flow``, the options its ablation switches off.

Users, requests on the wire and benchmark files name a strategy in text (``edgeci``,
``flow:barrier+raw``); it is parsed once where it comes in (:meth:`Strategy.parse`) and
from then on every layer asks the value what it means for it (does it gather maps on the
orchestrator, may its requests run whole on one device, does it place the tail) instead
of comparing text. ``str()`` gives the text back in its canonical form, so logs,
responses and tables read as users type it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from edgeci_mqtt.errors import PlanningError

__all__ = ["FLOW_WORDS", "STRATEGY_NAMES", "FlowOptions", "Strategy", "StrategyName"]

StrategyName = Literal["local", "replicas", "modnn", "deepthings", "aofl", "edgeci", "flow"]
"""Every strategy of docs/PLANNER.md, in the order tables list them."""
STRATEGY_NAMES: tuple[StrategyName, ...] = get_args(StrategyName)

_NO_OPTIONS = "strategy {} takes no options (only flow does: flow:barrier+raw+orchestrator-tail)"

FLOW_WORDS = {
    "barrier": ("barrier", True),
    "raw": ("compress", False),
    "orchestrator-tail": ("place_tail", False),
    "sequential": ("overlap", False),
    "unbanded": ("bands", False),
}
"""Option words after ``flow:``: which field each sets, to what (their order is the canonical one)."""


@dataclass(frozen=True)
class FlowOptions:
    """What ``flow`` adds over keeping rows on the devices, each switchable for the ablation:
    ``flow:barrier+raw+orchestrator-tail`` is rows on devices only; ``flow`` has everything."""

    barrier: bool = False
    """Every device finishes a block before any starts the next (the orchestrator says go)."""
    compress: bool = True
    """Rows travel compressed when that pays."""
    place_tail: bool = True
    """The tail runs where it is cheapest (else on the orchestrator)."""
    overlap: bool = True
    """A step's rows that need no halo run while the halo is in flight (:mod:`edgeci_mqtt.planner.overlap`)."""
    bands: bool = True
    """The image goes out in bands: a device starts on the upper while the lower travels (the same module)."""

    @classmethod
    def parse(cls, text: str) -> FlowOptions:
        """``"barrier+raw"`` -> the options those words switch (unknown words: :class:`PlanningError`)."""
        changes = {}
        for word in filter(None, (w.strip() for w in text.split("+"))):
            if word not in FLOW_WORDS:
                raise PlanningError(f"unknown flow option {word!r}; choose from {', '.join(FLOW_WORDS)}")
            field_name, value = FLOW_WORDS[word]
            changes[field_name] = value
        return cls(**changes)

    def __str__(self) -> str:
        """The words that switch these options, ``+``-joined in :data:`FLOW_WORDS` order ("" for all on)."""
        return "+".join(word for word, (name, value) in FLOW_WORDS.items() if getattr(self, name) == value)


@dataclass(frozen=True)
class Strategy:
    """A strategy by name, with ``flow``'s options (every other strategy takes none)."""

    name: StrategyName
    options: FlowOptions = FlowOptions()

    def __post_init__(self) -> None:
        _known(self.name)
        if self.name != "flow" and self.options != FlowOptions():
            raise PlanningError(_NO_OPTIONS.format(self.name))

    @classmethod
    def parse(cls, text: str) -> Strategy:
        """``"flow:barrier+raw"`` -> that strategy. Raises :class:`PlanningError` for an
        unknown strategy or option, or options on a strategy other than ``flow``."""
        text_name, _, words = text.partition(":")
        name = _known(text_name)
        if words and name != "flow":
            raise PlanningError(_NO_OPTIONS.format(name))
        return cls(name, FlowOptions.parse(words))

    def __str__(self) -> str:
        words = str(self.options)
        return f"{self.name}:{words}" if words else self.name

    @property
    def whole(self) -> bool:
        """Every request runs whole on one device (``local``, ``replicas``): never split."""
        return self.name in ("local", "replicas")

    @property
    def alone(self) -> bool:
        """One device alone, the baseline (``local``): the plan's device serves every request
        and runs the tail whenever it has room, whether or not the orchestrator would end it sooner."""
        return self.name == "local"

    @property
    def keeps_rows(self) -> bool:
        """Its split plans keep each block's rows on the devices, which pass halos to one
        another (``flow``, its ablations too): a split costs each device its messages, and a
        whole request runs in the split plan's blocks, one step each."""
        return self.name == "flow"

    @property
    def gathers(self) -> bool:
        """Every block's map is gathered on the orchestrator, which runs the tail (``edgeci``
        and the split baselines): always split; the rest keep data on the devices to the end."""
        return not (self.whole or self.keeps_rows)

    @property
    def ablation(self) -> bool:
        """``flow`` with some of what it adds switched off (always split, to measure the parts)."""
        return self.keeps_rows and self.options != FlowOptions()

    @property
    def may_serve_whole(self) -> bool:
        """A request may run whole on one device: ``local`` always, on its plan's device;
        ``replicas`` and ``flow`` in full on the device chosen per request by the work out."""
        return self.whole or (self.keeps_rows and not self.ablation)

    @property
    def places_tail(self) -> bool:
        """A split plan's tail runs where it is cheapest (``flow`` unless ``orchestrator-tail``);
        gathering strategies run it on the orchestrator, a whole request where it ends sooner."""
        return self.keeps_rows and self.options.place_tail


def _known(name: str) -> StrategyName:
    """``name`` as a strategy's name (:class:`PlanningError` if it names none)."""
    for known in STRATEGY_NAMES:
        if name == known:
            return known
    raise PlanningError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
