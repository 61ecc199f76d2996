"""Serving a request: split or whole, on which device, and the work handed out (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgeci_mqtt.models import skeleton_chain
from edgeci_mqtt.planner.costs import PROFILES_PRICED, handoff_seconds
from edgeci_mqtt.planner.measured_tail import EAGER, EVERY, MIN_SEEN, WINDOW, MeasuredTail
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.planner.serving import (
    Choice,
    Serving,
    WholeRequest,
    choose,
    choose_serving,
    price_shares,
    whole_request_plan,
)
from edgeci_mqtt.planner.strategies import PlanningContext, context_for, make_plan, whole_model_seconds
from edgeci_mqtt.planner.strategy import Strategy
from edgeci_mqtt.sim.choice import plan_for
from tests.planning import device, environment

pytestmark = pytest.mark.pure

GATHERING = ("edgeci", "modnn", "aofl", "deepthings")


def context(
    model: str = "smallcnn", size: int = 64, mbit: float = 1000.0, gflops: tuple[float, ...] = (10,) * 4
) -> PlanningContext:
    """Devices ``a``, ``b``, ... at these speeds, each behind a ``mbit`` link."""
    env = environment(*(device(chr(ord("a") + i), g, mbit=mbit) for i, g in enumerate(gflops)))
    return context_for(skeleton_chain(model).spec(size, size), env)


def serve(strategy: str, ctx: PlanningContext, outstanding: dict[str, float] | None = None) -> tuple[Plan, Serving]:
    plan = make_plan(Strategy.parse(strategy), ctx)
    return plan, choose_serving(plan, ctx, price_shares(plan, ctx.costs, ctx.env.devices), outstanding or {})


# ------------------------------------------------------------ choose: the earliest finish


def test_an_idle_cluster_splits_and_a_busy_one_runs_whole_requests() -> None:
    whole = {"a": 1.0, "b": 2.0}
    assert choose(0.4, ["a", "b"], whole, {}) == Choice("split", 0.4)
    # both busy for 0.8 s: split finishes at 1.2; whole on a at 1.8; still split
    assert choose(0.4, ["a", "b"], whole, {"a": 0.8, "b": 0.8}).mode == "split"
    # a busy for 3 s, b idle: split waits for a (3.4), whole on b finishes at 2.0
    assert choose(0.4, ["a", "b"], whole, {"a": 3.0}) == Choice("whole", 2.0, "b")
    # replicas (no split): the device that finishes first, ties by name
    assert choose(None, [], {"a": 1.0, "b": 1.0}, {}) == Choice("whole", 1.0, "a")
    with pytest.raises(ValueError):
        choose(None, [], {}, {})


def test_with_every_device_busy_a_split_must_cost_fewer_device_seconds() -> None:
    whole = {"a": 1.0, "b": 1.0}
    busy = {"a": 0.8, "b": 0.8}
    # finishing first would split (1.3 against 1.8), but the split takes 1.1 device-seconds
    # where a whole request takes 1.0: with everyone busy, that only lengthens the queue
    assert choose(0.5, ["a", "b"], whole, busy, split_cost_s=1.1) == Choice("whole", 1.8, "a")
    assert choose(0.5, ["a", "b"], whole, busy, split_cost_s=0.9) == Choice("split", 1.3)
    # one device idle: not saturated, the earliest finish decides (split 1.3, whole on b 2.0)
    assert choose(0.5, ["a", "b"], {"a": 2.0, "b": 2.0}, {"a": 0.8}, split_cost_s=2.2) == Choice("split", 1.3)


# ------------------------------------------------------------ choose_serving: per strategy


def test_flow_on_an_idle_cluster_splits_when_the_split_ends_sooner() -> None:
    ctx = context("vgg16", 224)
    plan, serving = serve("flow", ctx)
    assert plan.predicted_s < min(whole_model_seconds(ctx).values())  # the case this is
    shares = price_shares(plan, ctx.costs, ctx.env.devices)
    assert serving == Serving(shares, 0.0) and serving.mode == "split" and serving.whole is None


def test_flow_on_an_idle_cluster_runs_whole_when_one_device_ends_sooner() -> None:
    """A small model on fast links: a step's messages cost more than the rows it spreads save
    (the plan ``flow`` serves, priced as replayed, every message's CPU counted)."""
    ctx = context("smallcnn", 64)
    plan = plan_for(Strategy("flow"), ctx)
    serving = choose_serving(plan, ctx, price_shares(plan, ctx.costs, ctx.env.devices), {})
    whole = whole_model_seconds(ctx)
    assert plan.predicted_s > min(whole.values())  # the case this is
    steps = tuple(b.block for b in plan.blocks)
    assert serving == Serving({"a": whole["a"]}, 0.0, WholeRequest(Strategy("flow"), "a", steps))
    # a split ending as soon as the fastest device alone is preferred (fewer bytes in one place)
    tied = replace(plan, predicted_s=min(whole.values()))
    assert choose_serving(tied, ctx, {}, {}).mode == "split"


def test_flow_on_busy_devices_goes_where_the_request_ends_first() -> None:
    ctx = context("vgg16", 224)
    plan, _ = serve("flow", ctx)
    steps = tuple(b.block for b in plan.blocks)
    shares = price_shares(plan, ctx.costs, ctx.env.devices)
    whole = whole_model_seconds(ctx)
    # one device of the split busy for longer than a whole request takes elsewhere
    late = {plan.devices[0]: 10.0}
    serving = choose_serving(plan, ctx, shares, late)
    idle_device = min(d for d in whole if d != plan.devices[0])
    assert serving.whole == WholeRequest(Strategy("flow"), idle_device, steps)
    assert serving.work == {idle_device: pytest.approx(whole[idle_device])} and serving.backlog_s == 0.0
    # every device a little busy: the split still ends first; it is taken only if it costs
    # the devices fewer seconds in all than a whole request
    busy = {d: 0.1 for d in whole}
    cheap = {d: min(whole.values()) / 10 for d in plan.devices}
    assert choose_serving(plan, ctx, cheap, busy) == Serving(cheap, 0.1)
    dear = {d: min(whole.values()) / len(plan.devices) for d in plan.devices}
    assert choose_serving(plan, ctx, dear, busy).whole == WholeRequest(Strategy("flow"), "a", steps)


def test_local_always_runs_whole_on_its_device() -> None:
    ctx = context("vgg16", 224, gflops=(10, 20, 10, 10))
    plan, idle = serve("local", ctx)
    assert plan.devices == ("b",) and idle.work == {"b": plan.predicted_s}
    for outstanding in ({}, {"b": 50.0}, {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}):
        _, serving = serve("local", ctx, outstanding)
        assert serving.whole == WholeRequest(Strategy("local"), "b")  # one step: the whole chain


def test_local_hands_its_device_the_requests_own_seconds_however_busy_it_is() -> None:
    """The work counted for the request is what it adds to its device: its own predicted
    seconds. Counting its finish less the work already out gave a busy device less (or
    negative) work, so the next request saw a device idler than it was."""
    ctx = context("vgg16", 224, gflops=(10, 20, 10, 10))
    plan = make_plan(Strategy("local"), ctx)
    for busy_s in (0.0, plan.predicted_s / 2, 50.0):
        _, serving = serve("local", ctx, {"b": busy_s, "a": 1.0})
        assert serving.work == {"b": plan.predicted_s} and serving.backlog_s == busy_s


def test_flow_ablations_always_split() -> None:
    ctx = context("smallcnn", 64)  # where flow in full runs whole
    for text in ("flow:barrier", "flow:raw", "flow:orchestrator-tail", "flow:barrier+raw+orchestrator-tail"):
        busy = {"a": 5.0, "b": 1.0}
        plan, serving = serve(text, ctx, busy)
        shares = price_shares(plan, ctx.costs, ctx.env.devices)
        assert serving.mode == "split" and serving.work == shares
        assert serving.backlog_s == max(busy.get(d, 0.0) for d in shares)


@pytest.mark.parametrize("strategy", GATHERING)
def test_gathering_strategies_always_split(strategy: str) -> None:
    ctx = context("smallcnn", 64)
    busy = {"a": 5.0, "b": 5.0, "c": 5.0, "d": 5.0}
    plan, serving = serve(strategy, ctx, busy)
    assert serving == Serving(price_shares(plan, ctx.costs, ctx.env.devices), 5.0 if serving.work else 0.0)


def test_replicas_pick_the_device_that_ends_first_given_its_load() -> None:
    ctx = context("vgg16", 224, gflops=(10, 20, 10, 10))
    whole = whole_model_seconds(ctx)
    _, idle = serve("replicas", ctx)
    assert idle.whole == WholeRequest(Strategy("replicas"), "b") and idle.work == {"b": pytest.approx(whole["b"])}
    _, loaded = serve("replicas", ctx, {"b": 10.0, "a": 1.0})
    assert loaded.whole == WholeRequest(Strategy("replicas"), "c") and loaded.backlog_s == 0.0
    _, everywhere = serve("replicas", ctx, {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
    assert everywhere.whole is not None and everywhere.whole.device == "b" and everywhere.backlog_s == 1.0


# ------------------------------------------------------------ whole_request_plan, price_shares


def test_a_whole_request_plan_stays_on_its_device_and_moves_after_a_failure() -> None:
    ctx = context("vgg16", 224)
    steps = tuple(b.block for b in make_plan(Strategy("flow"), ctx).blocks)
    whole = WholeRequest(Strategy("flow"), "b", steps)
    plan = whole_request_plan(ctx, whole, {"a": 9.0})
    assert plan.devices == ("b",) and tuple(b.block for b in plan.blocks) == steps
    assert plan.strategy == Strategy("flow")
    left = replace(ctx, env=ctx.env.without("b"))  # b failed: the one that ends first given the work out
    assert whole_request_plan(left, whole, {"a": 9.0}).devices == ("c",)
    assert whole_request_plan(left, whole, {}).devices == ("a",)
    assert len(whole_request_plan(ctx, WholeRequest(Strategy("replicas"), "b"), {}).blocks) == 1


def test_shares_count_each_flow_task_its_messages() -> None:
    ctx = context("vgg16", 224)
    plan = make_plan(Strategy("flow"), ctx)
    flow = price_shares(plan, ctx.costs, ctx.env.devices)
    computed = price_shares(replace(plan, strategy=Strategy("edgeci")), ctx.costs, ctx.env.devices)
    for view in ctx.env.devices:
        tasks = sum(t.device == view.name for b in plan.blocks for t in b.tasks)
        assert flow.get(view.name, 0.0) == pytest.approx(computed.get(view.name, 0.0) + tasks * handoff_seconds(view))
    assert set(price_shares(plan, ctx.costs, ctx.env.devices[:2])) <= {"a", "b"}  # only the devices asked about


def test_flow_serves_a_split_on_one_device_whole_there() -> None:
    """A plan whose blocks all run on one device (a slow link everywhere else) is that
    device's whole request with an auction and a hand-off more: served whole, however close
    the estimates (on an emulated cluster the split's were 2 % apart and it ran 5 % slower)."""
    ctx = context("vgg16", 224, gflops=(10, 10, 10, 10))
    plan = make_plan(Strategy("flow"), ctx)
    on_a = replace(
        plan,
        blocks=tuple(replace(b, tasks=tuple(replace(t, device="a") for t in b.tasks)) for b in plan.blocks),
        predicted_s=0.5 * min(whole_model_seconds(ctx).values()),  # estimated far faster: still not a split
    )
    serving = choose_serving(on_a, ctx, {"a": 1.0}, {}, Strategy("flow"))
    assert serving.mode == "whole" and serving.whole is not None and serving.whole.device == "a"


def test_a_tail_on_the_devices_is_kept_only_while_it_is_measured_to_pay() -> None:
    """The planner's placement serves until both placements have been measured (the other one
    tried every EAGER-th request), then the lower median wins, and the loser is still tried
    every EVERY-th request, so a verdict can turn back."""
    measured = MeasuredTail()
    served = []
    for _ in range(3 * EAGER):
        on_devices = measured.next_on_devices()
        served.append(on_devices)
        measured.record(on_devices, 0.5 if on_devices else 0.3)  # the orchestrator's tail is faster
    assert served == [True, True, False] * MIN_SEEN
    assert not measured.prefers_devices()
    later = [measured.next_on_devices() for _ in range(2 * EVERY)]
    assert later.count(True) == 2 and later.count(False) == 2 * EVERY - 2  # the devices still tried, rarely
    # the devices got faster (their tail weights made, say): once most of the last WINDOW say so, it turns back
    flips = [measured.record(True, 0.1) for _ in range(WINDOW)]
    assert flips == [False, False, True, False, False]
    assert measured.prefers_devices()
    assert str(measured) == "median on the devices 100 ms, on the orchestrator 300 ms"


def test_a_tail_that_pays_on_the_devices_stays_there() -> None:
    measured, tried = MeasuredTail(), []
    for served in range(1, 3 * EVERY + 1):
        on_devices = measured.next_on_devices()
        if not on_devices:
            tried.append(served)
        assert not measured.record(on_devices, 0.2 if on_devices else 0.3)
    assert measured.prefers_devices()
    assert tried == [EAGER, 2 * EAGER, 3 * EAGER, EVERY, 2 * EVERY, 3 * EVERY]


def test_whole_requests_are_priced_with_the_profiles_the_plan_was_made_with() -> None:
    """The orchestrator keeps a plan until the device table changes, while devices re-announce
    corrected speeds: whole requests priced with the plan's profiles (``whole_s``) compare
    alike with it. Priced now, a device announced slower made a stale split look faster."""
    ctx = context("vgg16", 224)
    plan, _ = serve("flow", ctx)
    shares = price_shares(plan, ctx.costs, ctx.env.devices)
    assert choose_serving(plan, ctx, shares, {}).mode == "split"
    cheap = dict.fromkeys(whole_model_seconds(ctx), plan.predicted_s / 2)
    served = choose_serving(plan, ctx, shares, {}, whole_s=cheap)
    assert served.mode == "whole" and served.work == {"a": plan.predicted_s / 2}


def test_a_row_model_remembers_a_bounded_number_of_profiles() -> None:
    """Each corrected profile a device announces is priced once; the oldest are forgotten."""
    ctx = context("smallcnn", 64)
    costs, profile = ctx.costs, ctx.env.devices[0].profile
    first = costs.whole_seconds(profile)
    for k in range(2 * PROFILES_PRICED):
        slower = profile.scaled(1 / (1 + 0.01 * (k + 1)))
        assert costs.whole_seconds(slower) > first
        costs.table(slower)
    assert len(costs._whole) == len(costs._tables) == PROFILES_PRICED  # the bound itself
    assert costs.whole_seconds(profile) == first  # priced again, the same
