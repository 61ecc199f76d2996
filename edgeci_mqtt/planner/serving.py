"""Serving one request: split it across devices, or run it whole on one (pure).

When requests are sparse, splitting (``flow``) gives the lowest latency, where its halo
and messages cost less than the devices it adds save (ResNet-34's split on the reference
clusters does not: it is served whole even on an idle cluster). When they queue, every
device is busy anyway, and a split request waits for the busiest device it uses, while a
whole request on one device (``replicas``) pays no halo, no messages between devices and
no tail transfer. Given the predicted seconds of work already handed to each device and
not seen finish (``outstanding``, kept by the orchestrator), :func:`choose` takes whichever
finishes the request first: a split plan starts when the busiest of its devices is free;
a whole request runs on the device that would finish it first.

Except when every device is busy. Then the requests queue, and what bounds the latency
of all of them is throughput: a split that costs the devices more seconds in all (its
halo, its messages) than one device takes for the whole request only makes the queue
longer, however soon it would finish alone.

:func:`choose_serving` applies that to a strategy: gathering strategies and ``flow``'s
ablations always split, ``local`` always runs whole on its plan's device, ``replicas``
picks a device, ``flow`` picks between its split plan and a device.
:func:`whole_request_plan` is the plan of a request served whole, again for the devices
left after one failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.planner.costs import RowModel, handoff_seconds
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.planner.strategies import PlanningContext, whole_model_plan, whole_model_seconds
from edgeci_mqtt.planner.strategy import Strategy

__all__ = ["Choice", "Serving", "WholeRequest", "choose", "choose_serving", "price_shares", "whole_request_plan"]


@dataclass(frozen=True)
class Choice:
    mode: Literal["split", "whole"]
    finish_s: float
    """Predicted seconds from now to the answer."""
    device: str = ""
    """For ``whole``: the device that runs it."""


def choose(
    split_s: float | None,
    split_devices: Sequence[str],
    whole_s: Mapping[str, float],
    outstanding: Mapping[str, float],
    split_cost_s: float = 0.0,
) -> Choice:
    """The earliest predicted finish; ``split_s`` None: splitting is not an option.

    ``split_cost_s``: the device-seconds a split takes from all its devices together; when
    every device has work out, a split dearer than the cheapest whole request is no option."""
    saturated = bool(whole_s) and all(outstanding.get(d, 0.0) > 0 for d in whole_s)
    if saturated and split_s is not None and split_cost_s >= min(whole_s.values()):
        split_s = None
    options = []
    if split_s is not None:
        start = max((outstanding.get(d, 0.0) for d in split_devices), default=0.0)
        options.append(Choice("split", start + split_s))
    for device, seconds in sorted(whole_s.items()):
        options.append(Choice("whole", outstanding.get(device, 0.0) + seconds, device))
    if not options:
        raise ValueError("no way to serve the request: no split plan and no device")
    return min(options, key=lambda c: (c.finish_s, c.mode != "split"))


def price_shares(plan: Plan, costs: RowModel, devices: Sequence[DeviceView]) -> dict[str, float]:
    """Predicted seconds a split plan takes from each of ``devices`` (its load, for
    choosing): its compute, and where the devices keep rows (``flow``) its messages."""
    views = {v.name: v for v in devices}
    shares: dict[str, float] = {}
    for block_plan in plan.blocks:
        for task in block_plan.tasks:
            if task.device in views:
                r = task.out_region.rows
                view = views[task.device]
                seconds = costs.compute_seconds(view.profile, block_plan.block, np.array([r.start]), np.array([r.stop]))
                handoff = handoff_seconds(view) if plan.strategy.keeps_rows else 0.0
                shares[task.device] = shares.get(task.device, 0.0) + float(seconds[0]) + handoff
    return shares


@dataclass(frozen=True)
class WholeRequest:
    """A request served whole: the device chosen for it, and the steps it runs in."""

    strategy: Strategy
    device: str
    steps: tuple[FusedBlock, ...] = ()
    """The split plan's blocks, one step each (``flow``: between them the device may turn to
    an older split request's step); empty: the whole chain as one step."""


@dataclass(frozen=True)
class Serving:
    """How one request is served, and the work it hands out."""

    work: Mapping[str, float]
    """Predicted seconds it hands each device (counted as outstanding until it is done)."""
    backlog_s: float
    """The most work already out on any device it hands work to (its deadline waits that too)."""
    whole: WholeRequest | None = None
    """Served whole on one device; None: split, as its plan says (auctioned or not)."""

    @property
    def mode(self) -> Literal["split", "whole"]:
        return "split" if self.whole is None else "whole"


def choose_serving(
    plan: Plan,
    ctx: PlanningContext,
    shares: Mapping[str, float],
    outstanding: Mapping[str, float],
    asked: Strategy | None = None,
    whole_s: Mapping[str, float] | None = None,
) -> Serving:
    """How to serve a request of strategy ``asked`` (default: the plan's) with ``plan`` (the
    plan chosen for it on ``ctx``'s devices: for ``flow`` possibly another strategy's,
    docs/PLANNER.md), given the work ``outstanding`` on each device and what the split
    plan takes from each (``shares``, :func:`price_shares`).

    ``replicas`` and ``flow`` pick whichever finishes first (:func:`choose`): ``flow``
    between its split plan and a whole request on one device, on an idle cluster too (a
    split that ends no sooner than one device alone is no way to serve it), ``replicas``
    among whole requests. With every device busy, ``flow`` splits only if that costs the
    devices fewer seconds in all. ``local`` runs whole on its plan's device; gathering
    strategies and ``flow``'s ablations always split. ``whole_s``: each device's seconds for a
    whole request (:func:`~edgeci_mqtt.planner.strategies.whole_model_seconds`), priced with
    the profiles the plan was made with (default: priced now), so that the two compare alike."""
    strategy = asked or plan.strategy
    if not strategy.may_serve_whole:
        return _split(shares, outstanding)
    if strategy.alone:
        device, seconds = plan.devices[0], plan.predicted_s
    else:
        whole_s = whole_s if whole_s is not None else whole_model_seconds(ctx)
        # a "split" whose blocks all run on one device is that device's whole request with
        # an auction and a hand-off more: never the faster way, whatever the estimates say
        used = {d for b in plan.blocks for d in b.devices}
        alone = len(used) == 1 and used <= whole_s.keys()
        split_s = None if strategy.whole or alone else plan.predicted_s
        cost_s = 0.0 if strategy.whole else sum(shares.values())
        choice = choose(split_s, plan.devices, whole_s, outstanding, cost_s)
        if choice.mode == "split":
            return _split(shares, outstanding)
        device, seconds = choice.device, whole_s[choice.device]
    steps = tuple(b.block for b in plan.blocks) if strategy.keeps_rows else ()
    work = {device: seconds}  # the request's own seconds, however much work the device has already
    return Serving(work, _backlog_s(work, outstanding), WholeRequest(strategy, device, steps))


def whole_request_plan(ctx: PlanningContext, whole: WholeRequest, outstanding: Mapping[str, float]) -> Plan:
    """The plan of a request served whole, for ``ctx``'s devices: on the chosen device, or
    once it has failed (it is not among them) on the one that finishes first given the
    work ``outstanding``."""
    seconds = whole_model_seconds(ctx, alone=whole.strategy.alone)
    device = whole.device
    if device not in seconds:
        device = min(seconds, key=lambda d: (outstanding.get(d, 0.0) + seconds[d], d))
    return whole_model_plan(ctx, whole.strategy, device, seconds[device], whole.steps)


def _split(shares: Mapping[str, float], outstanding: Mapping[str, float]) -> Serving:
    return Serving(dict(shares), _backlog_s(shares, outstanding))


def _backlog_s(work: Mapping[str, float], outstanding: Mapping[str, float]) -> float:
    return max((outstanding.get(d, 0.0) for d in work), default=0.0)
