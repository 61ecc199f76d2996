"""``flow``'s choice among whole plans: the simulator judges the candidates the planner builds.

DPFL builds a plan from block costs it estimates one block at a time; the simulator replays a
whole plan, with every message, link and CPU queue, and is the closer of the two to a
measured run (docs/PLANNER.md). So ``flow`` builds several candidates and keeps the one the
simulator finds best: its split plan with the tail placed, the same with the tail on the
orchestrator (a placement that does not pay is dropped; its own plan is the faster of the
overlapped and the sequential one, :mod:`edgeci_mqtt.planner.overlap`), and the gathering plan of
``edgeci`` (on a cluster whose links are slow against its devices, moving every map through
the orchestrator can cost less than passing halos). Whole requests on one device are the
serving decision's to weigh (:func:`~edgeci_mqtt.planner.serving.choose_serving`), against
the chosen plan's simulated makespan.

A plan that is fastest only while every profile holds is fragile: a device 20 % slower than
it measured, or links busier than they were, and another plan would have been better. Each
candidate is also replayed with each of its most loaded devices 20 % slower and with every
link 20 % slower, and judged by the mean of its nominal and its worst makespan; another
candidate replaces the strategy's own plan only when it scores clearly better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from edgeci_mqtt.planner.costs import TaskWork
from edgeci_mqtt.planner.environment import Environment
from edgeci_mqtt.planner.overlap import with_overlap
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.planner.serving import choose_serving, price_shares, whole_request_plan
from edgeci_mqtt.planner.strategies import PlanningContext, make_plan, plan_edgeci
from edgeci_mqtt.planner.strategy import Strategy
from edgeci_mqtt.sim.simulator import simulate

__all__ = ["CUT_MARGIN", "Judged", "best", "candidates", "judge", "own_plan", "plan_for", "served_plan"]

SLOWER = 1.2
"""A device this much slower than its profile, or a link this much slower than announced."""
LOADED = 2
"""How many of a plan's most loaded devices are each tried slower."""
ROBUSTNESS = 0.5
"""Weight of the worst perturbed makespan against the nominal one in a candidate's score."""
MARGIN = 0.02
"""How much better than the strategy's own plan another candidate must score to replace it:
a near tie is no reason to change plans (docs/PLANNER.md, flow's choice, says how it was set)."""
CUT_MARGIN = 0.05
"""How much faster than the uncut plan a plan with steps cut for overlap must replay to be
taken: every step more costs a device time the replay does not see (measured on the
emulated reference clusters: each kind of cut made `flow` 2-7 % slower where the replay
predicted at most 3 % gained; docs/PLANNER.md, halo and compute overlapped)."""


@dataclass(frozen=True)
class Judged:
    """One candidate: its simulated makespan as planned, and under the worst perturbation."""

    plan: Plan
    nominal_s: float
    worst_s: float

    @property
    def score(self) -> float:
        return (1 - ROBUSTNESS) * self.nominal_s + ROBUSTNESS * self.worst_s


def _perturbed(plan: Plan, ctx: PlanningContext) -> list[Environment]:
    env = ctx.env
    shares = price_shares(plan, ctx.costs, env.devices)
    loaded = sorted(shares, key=lambda d: (-shares[d], d))[:LOADED]
    slower = [
        replace(
            env,
            devices=tuple(replace(v, profile=v.profile.scaled(1 / SLOWER)) if v.name == d else v for v in env.devices),
        )
        for d in loaded
    ]
    busier = tuple(replace(v, link=replace(v.link, bandwidth_mbit=v.link.bandwidth_mbit / SLOWER)) for v in env.devices)
    return [*slower, replace(env, devices=busier)]


def judge(plan: Plan, ctx: PlanningContext) -> Judged:
    """``plan`` replayed as planned and under each perturbation."""
    work = TaskWork(ctx.chain.stages, ctx.chain.shapes)
    nominal = simulate(plan, ctx.env, work).makespan_s
    worst = max([nominal, *(simulate(plan, env, work).makespan_s for env in _perturbed(plan, ctx))])
    return Judged(plan, nominal, worst)


def best(judged: Sequence[Judged]) -> Judged:
    """The first candidate (the strategy's own plan), unless another scores better by more
    than :data:`MARGIN`; then the best of the others. The score prefers, over the fastest as
    planned, a plan nearly as fast that holds up better."""
    own, *others = judged
    challenger = min(others, key=lambda j: j.score, default=own)
    return challenger if challenger.score < own.score * (1 - MARGIN) else own


def candidates(strategy: Strategy, ctx: PlanningContext) -> tuple[list[Plan], list[Plan]]:
    """``flow``'s candidate plans (see the module docstring): its own (with halo and image
    overlapped, with either, then sequential: the one that replays faster is its own), then
    the others."""
    options = strategy.options
    uncut = replace(options, overlap=False, bands=False)
    sequential = replace(make_plan(replace(strategy, options=uncut), ctx), strategy=strategy)
    halo, bands = options.overlap, options.bands
    cuts = [] if options.barrier else [(halo, bands), (halo, False), (False, bands)]
    own = [with_overlap(sequential, ctx.chain, ctx.costs, ctx.env, *cut) for cut in dict.fromkeys(cuts) if any(cut)]
    own.append(sequential)  # its own plan still (Plan.overlap and .bands say how it runs); planned once, then cut
    others = []
    if strategy.places_tail:  # uncut too: cuts are own_plan's to judge, with their margin
        orchestrator_tail = replace(strategy, options=replace(options, place_tail=False))
        plan = make_plan(replace(orchestrator_tail, options=replace(uncut, place_tail=False)), ctx)
        others.append(replace(plan, strategy=orchestrator_tail))
    return own, [*others, plan_edgeci(ctx)]


def served_plan(strategy: Strategy, ctx: PlanningContext) -> Plan:
    """The plan one request of ``strategy`` runs with on ``ctx``'s idle devices: its
    :func:`plan_for`, or the whole request on one device where the serving decision
    prefers that (:func:`~edgeci_mqtt.planner.serving.choose_serving`)."""
    plan = plan_for(strategy, ctx)
    serving = choose_serving(plan, ctx, price_shares(plan, ctx.costs, ctx.env.devices), {}, strategy)
    return plan if serving.whole is None else whole_request_plan(ctx, serving.whole, {})


def own_plan(own: Sequence[Plan], replayed_s: Sequence[float]) -> Plan:
    """Of the strategy's own plans (the uncut one last, as :func:`candidates` lists them) and
    their replayed makespans, the uncut plan, unless a cut one replays more than
    :data:`CUT_MARGIN` faster."""
    fastest = min(range(len(own)), key=lambda k: replayed_s[k])
    return own[fastest] if replayed_s[fastest] < replayed_s[-1] * (1 - CUT_MARGIN) else own[-1]


def plan_for(strategy: Strategy, ctx: PlanningContext) -> Plan:
    """The plan that serves ``strategy``: its planner's, except for ``flow`` (not its
    ablations, which measure one option each), whose best candidate it is, with the
    simulated makespan as its prediction."""
    if not strategy.keeps_rows or strategy.ablation:
        return make_plan(strategy, ctx)
    own, others = candidates(strategy, ctx)
    work = TaskWork(ctx.chain.stages, ctx.chain.shapes)
    mine = own_plan(own, [simulate(plan, ctx.env, work).makespan_s for plan in own])
    chosen = best([judge(mine, ctx), *(judge(plan, ctx) for plan in others)])
    return replace(chosen.plan, predicted_s=chosen.nominal_s)
