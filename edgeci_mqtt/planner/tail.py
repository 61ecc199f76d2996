"""Where the tail runs: the orchestrator, one device, or its first fully connected layer
split by output features across devices (docs/RUNTIME.md, `flow`).

The tail is a head (global pooling, flatten), a first fully connected layer and the rest
(activations and later layers). A batch of one makes every fully connected layer a
matrix-vector product bound by reading its weights, so the first layer (VGG-16's holds
411 MB of its 554 MB) is worth cutting: each part computes some of its output features
from the whole final map, on its own device, and sends that slice to the ``finisher``,
which runs the rest and answers. A part must fit its share of the layer's weights (and
the finisher the rest's) in the memory budget its device announced.

:func:`place_tail` prices every placement from where the final map's tiles are (their
bytes over each participant's own link), each participant's profile, and the slices
and logits sent on, and keeps the cheapest: the orchestrator, each device alone, and the
first layer split by fc speed over the k fastest devices (k = 2..n), finished by the
fastest of them.

What each device has made of the classifier is part of the price: a device holds none of
it at boot and makes the chunks of rows a placement gives it (:class:`TailRows`), which
costs a slow board more than the layer itself does. So a cold cluster's tail runs where
its weights are (the orchestrator), and :func:`tail_to_prepare` names the rows devices
should make while idle, for the placement that would be cheapest once they hold them.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.core.stages import BYTES_PER_ELEMENT
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.planner.environment import MESSAGE_OVERHEAD_BYTES, DeviceView, Environment
from edgeci_mqtt.timeline import ORCHESTRATOR

__all__ = [
    "LOGITS_BYTES",
    "TailPlan",
    "TailWork",
    "fits",
    "making_seconds",
    "place_tail",
    "placement_making_seconds",
    "split_features",
    "tail_to_prepare",
]

LOGITS_BYTES = 4096
"""About 1000 float32 scores: what a tail finished on a device sends back."""


@dataclass(frozen=True)
class TailPlan:
    """``parts``: who computes which output features of the tail's first fully connected
    layer (empty: ``finisher`` runs the whole tail); ``finisher`` gathers the parts' slices,
    runs the rest of the tail and answers. Either may be :data:`ORCHESTRATOR`."""

    finisher: str = ORCHESTRATOR
    parts: tuple[tuple[str, Span], ...] = ()
    prepare: tuple[tuple[str, TailRows], ...] = field(default=(), compare=False)
    """Tail weights devices are to make when idle, for a placement cheaper once they hold
    them (:func:`tail_to_prepare`); not part of where the tail runs."""

    def __post_init__(self) -> None:
        stops = [0] + [s.stop for _, s in self.parts]
        if any(s.start != stop for (_, s), stop in zip(self.parts, stops, strict=False)):
            raise PlanningError(f"tail parts {self.parts} do not cut the first layer's features in order")
        if any(d == ORCHESTRATOR for d, _ in self.parts):
            raise PlanningError(
                "a part of the tail runs on a device (the orchestrator runs the whole tail or finishes it)"
            )

    @property
    def on_orchestrator(self) -> bool:
        return self.finisher == ORCHESTRATOR and all(d == ORCHESTRATOR for d, _ in self.parts)

    @property
    def readers(self) -> tuple[str, ...]:
        """Who needs the whole final map: the parts, or the finisher running it all."""
        return tuple(d for d, _ in self.parts) if self.parts else (self.finisher,)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({*self.readers, self.finisher} - {ORCHESTRATOR}))

    def weights_wanted(self, features: int) -> dict[str, TailRows]:
        """What each device of the placement uses of the tail's weights (of a first layer of
        ``features``): its part's rows, every row to run it whole, the later layers to finish."""
        if self.parts:
            wanted = {d: TailRows((s,), rest=d == self.finisher) for d, s in self.parts}
        else:
            wanted = {self.finisher: TailRows((Span(0, features),), rest=True)}
        wanted.setdefault(self.finisher, TailRows(rest=True))
        return {d: rows for d, rows in wanted.items() if d != ORCHESTRATOR}


@dataclass(frozen=True)
class TailWork:
    """The tail's ops as head, first fully connected layer, rest (see the module docstring)."""

    head: tuple[OpWork, ...]
    first: OpWork
    rest: tuple[OpWork, ...]
    features: int
    """Output features of the first layer."""

    @classmethod
    def of_split(cls, ops: Sequence[OpWork]) -> TailWork | None:
        """:meth:`of`, or None when the tail has no fully connected layer (an output map):
        then it runs whole where the answer is made, on the orchestrator."""
        return cls.of(ops) if any(op.kind == "fc" for op in ops) else None

    @classmethod
    def of(cls, ops: Sequence[OpWork]) -> TailWork:
        index = next((k for k, op in enumerate(ops) if op.kind == "fc"), None)
        if index is None:
            raise PlanningError("the tail has no fully connected layer")
        first = ops[index]
        return cls(tuple(ops[:index]), first, tuple(ops[index + 1 :]), first.flops // 2 // max(first.depth, 1))

    def part(self, features: Span) -> tuple[OpWork, ...]:
        """The head and a share of the first layer."""
        return (*self.head, self.part_of_first(features))

    def part_of_first(self, features: Span) -> OpWork:
        """The first layer's ops for these output features (its weight rows scale everything)."""
        share = features.size / self.features
        first = self.first
        return OpWork("fc", round(first.flops * share), self.first_bytes(features), first.depth, 1)

    def first_bytes(self, features: Span) -> int:
        """Bytes the first layer moves for these output features."""
        return round(self.first.bytes * (features.size / self.features))

    def part_weight_bytes(self, features: Span) -> int:
        return self.rows_weight_bytes(features.size)

    def rows_weight_bytes(self, rows: int) -> int:
        """Weights and biases of this many rows of the first layer."""
        return rows * (self.first.depth + 1) * BYTES_PER_ELEMENT

    @property
    def rest_weight_bytes(self) -> int:
        """Weights and biases of the fully connected layers after the first."""
        return sum(
            (op.flops // 2 + op.flops // 2 // max(op.depth, 1)) * BYTES_PER_ELEMENT
            for op in self.rest
            if op.kind == "fc"
        )

    @property
    def weight_bytes(self) -> int:
        """Of the whole tail: what a device running all of it must hold."""
        return self.part_weight_bytes(Span(0, self.features)) + self.rest_weight_bytes

    def slice_bytes(self, features: Span) -> int:
        return features.size * BYTES_PER_ELEMENT


def fits(view: DeviceView, weight_bytes: int) -> bool:
    """The device announced room for these tail weights (or no limit)."""
    return view.memory_bytes is None or weight_bytes <= view.memory_bytes


def making_seconds(view: DeviceView, work: TailWork, wanted: TailRows) -> float:
    """Seconds ``view`` takes to make what it lacks of the tail weights ``wanted``."""
    held = view.tail
    if held is None:
        return 0.0
    made = sum(work.rows_weight_bytes(held.missing_rows(run, work.features)) for run in wanted.first)
    if wanted.rest and not held.rest:
        made += work.rest_weight_bytes
    return view.profile.making_seconds(made)


def placement_making_seconds(env: Environment, work: TailWork, tail: TailPlan) -> float:
    """Seconds before the placement's devices have made the weights they lack (side by side)."""
    views = {v.name: v for v in env.devices}
    wanted = tail.weights_wanted(work.features)
    return max((making_seconds(views[d], work, rows) for d, rows in wanted.items() if d in views), default=0.0)


def split_features(features: int, speeds: Sequence[tuple[str, float]]) -> tuple[tuple[str, Span], ...]:
    """Contiguous feature runs in proportion to speed: cumulative shares rounded, so the
    runs stay in order, within the features and end exactly at the last one."""
    total, parts, start, running = sum(s for _, s in speeds), [], 0, 0.0
    for name, speed in speeds:
        running += speed
        stop = min(features, round(features * running / total))
        if stop > start:
            parts.append((name, Span(start, stop)))
        start = max(start, stop)
    return tuple(parts)


KEEP_MARGIN = 0.10
"""A placement in use is kept unless another is estimated this much faster: estimates
move a little with each speed a device re-announces, and a placement that changes has its
devices make rows and drop others (docs/PLANNER.md, tail placement)."""


def place_tail(
    env: Environment,
    work: TailWork,
    map_bytes: int,
    held: dict[str, int],
    orchestrator_holds: bool,
    keep: TailPlan | None = None,
) -> tuple[TailPlan, float]:
    """The cheapest placement and its estimated seconds from the final map's last tile.

    ``held``: bytes of the final map each device holds; ``orchestrator_holds``: the whole
    map is on the orchestrator already (a gathering strategy), else it is fetched there too.
    ``keep``: the placement in use, kept while it still fits and is within
    :data:`KEEP_MARGIN` of the cheapest.
    """
    logits = MESSAGE_OVERHEAD_BYTES + LOGITS_BYTES
    options: list[tuple[float, TailPlan]] = []

    def fetch(view: DeviceView) -> float:
        """The map's tiles this device lacks, over its own link, each from another device or the orchestrator."""
        missing = map_bytes - held.get(view.name, 0)
        return (missing / view.bytes_per_s + 2 * view.link.latency_s) if missing else 0.0

    broker = env.broker_link
    gather = 0.0 if orchestrator_holds else map_bytes / broker.bytes_per_s + 2 * broker.latency_s
    everything = (*work.head, work.first, *work.rest)
    options.append((gather + env.orchestrator.work_seconds(everything), TailPlan()))
    whole = Span(0, work.features)
    for view in env.devices:
        if fits(view, work.part_weight_bytes(whole) + work.rest_weight_bytes):
            answer = logits / view.bytes_per_s + view.link.latency_s
            alone = view.profile.work_seconds(everything) + making_seconds(view, work, TailRows((whole,), rest=True))
            options.append((fetch(view) + alone + answer, TailPlan(view.name)))
    fc_speed = {v.name: 1.0 / v.profile.work_seconds((work.first,)) for v in env.devices}
    ranked = sorted(env.devices, key=lambda v: (-fc_speed[v.name], v.name))
    if not ranked:
        return TailPlan(), options[0][0]
    head = {v.name: fetch(v) + v.profile.work_seconds(work.head) for v in env.devices}
    views = {v.name: v for v in env.devices}

    def finish_seconds(finisher: DeviceView) -> float:
        made = making_seconds(finisher, work, TailRows(rest=True))
        return made + finisher.profile.work_seconds(work.rest) + logits / finisher.bytes_per_s

    def split_seconds(finisher: DeviceView, parts: Sequence[tuple[str, Span]]) -> float:
        """The first layer's parts on their devices, sent on to ``finisher``, which runs the rest."""
        send = 2 * finisher.link.latency_s
        ready = max(
            head[d]
            + making_seconds(views[d], work, TailRows((s,)))
            + views[d].profile.moving_seconds("fc", work.first_bytes(s))
            + (0.0 if d == finisher.name else work.slice_bytes(s) / finisher.bytes_per_s + send)
            for d, s in parts
        )
        return ready + finish_seconds(finisher)

    def split_fits(finisher: DeviceView, parts: Sequence[tuple[str, Span]]) -> bool:
        """Every part's device has room for its rows, the finisher (which has a part) for the rest's too."""
        own = dict(parts).get(finisher.name)
        return (
            own is not None
            and fits(finisher, work.part_weight_bytes(own) + work.rest_weight_bytes)
            and all(fits(views[d], work.part_weight_bytes(s)) for d, s in parts)
        )

    def kept_seconds(kept: TailPlan) -> float | None:
        """The placement in use, if it can still run: its devices are here, with room for its rows."""
        if not kept.parts:  # the orchestrator, or one device: priced among the options
            return next((seconds for seconds, plan in options if plan == kept), None)
        if kept.finisher not in views or any(d not in views for d, _ in kept.parts):
            return None
        finisher = views[kept.finisher]
        return split_seconds(finisher, kept.parts) if split_fits(finisher, kept.parts) else None

    # Splits over the k fastest (k = 2..n), finished by the fastest: O(n) each, n up to 64.
    finisher = ranked[0]
    finish = finish_seconds(finisher)
    by_name: list[DeviceView] = []
    # When every device's share is at least two features, every device of every split gets
    # some (cumulative rounding moves a share by one at most), fetches the map and runs the
    # head: a split over more devices cannot end before the slowest of those ends.
    bounded = work.features * min(fc_speed.values()) >= 2 * sum(fc_speed.values())
    floor = -math.inf
    for view in ranked:
        floor = max(floor, head[view.name] + finish)
        if bounded and floor >= min(seconds for seconds, _ in options):
            break
        # in name order: a device keeps about the same rows from one request to the next
        # (a device holds only the rows it has been given, and making new ones costs time)
        insort(by_name, view, key=lambda v: v.name)
        if len(by_name) < 2:
            continue
        parts = split_features(work.features, [(v.name, fc_speed[v.name]) for v in by_name])
        if split_fits(finisher, parts):  # not if the finisher's share rounded to nothing
            options.append((split_seconds(finisher, parts), TailPlan(finisher.name, parts)))
    seconds, plan = min(options, key=lambda o: o[0])
    kept = kept_seconds(keep) if keep is not None else None
    if keep is not None and kept is not None and kept <= seconds * (1 + KEEP_MARGIN):
        return keep, kept
    return plan, seconds


def tail_to_prepare(
    env: Environment,
    work: TailWork,
    map_bytes: int,
    held: dict[str, int],
    orchestrator_holds: bool,
    chosen: TailPlan,
    keep: TailPlan | None = None,
) -> tuple[tuple[str, TailRows], ...]:
    """The tail weights each device lacks for the placement :func:`place_tail` would choose
    if every device held every row, when that is not ``chosen``: made while the device is
    idle, they make it the cheapest for a later request (without them, a cluster that
    starts cold would keep its tail where the weights are)."""
    if all(v.tail is None for v in env.devices):
        return ()
    warm = replace(env, devices=tuple(replace(v, tail=None) for v in env.devices))
    best, _ = place_tail(warm, work, map_bytes, held, orchestrator_holds, keep)
    if best == chosen:
        return ()
    wanted = best.weights_wanted(work.features)
    return tuple((d, rows) for d, rows in wanted.items() if making_seconds(env.device(d), work, rows) > 0)
