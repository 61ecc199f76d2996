"""One executor for every strategy: its programs, its attempt machine event by event (pure:
no clock, no I/O), and every strategy's plan run through it exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.actions import (
    Compute,
    Fail,
    Finish,
    GiveUp,
    Ignore,
    Keep,
    Release,
    Restart,
    SendProgram,
    SendRows,
)
from edgeci_mqtt.orchestrator.attempt import REPORTS_S, Arrived, Attempt, Begin, Computed, Tick
from edgeci_mqtt.orchestrator.programs import Compiled, compile_plan
from edgeci_mqtt.planner.strategies import context_for, make_plan
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy
from edgeci_mqtt.timeline import ORCHESTRATOR
from edgeci_mqtt.wire import FailureMessage, PackedArray, ProgressMessage, RowsMessage
from tests.exactness import References, assert_float32_faithful
from tests.executor import ORCH, run_attempt
from tests.planning import device, environment

pytestmark = pytest.mark.pure

DEVICES = frozenset({"a", "b", "c"})


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore(dict.fromkeys(("smallcnn", "vgg16", "resnet34")), seed=0)


def plan_of(store: ModelStore, strategy: str, model: str = "smallcnn", size: int = 64):  # type: ignore[no-untyped-def]
    chain = store.get(model).chain.spec(size, size)
    env = environment(device("a", 100), device("b", 60), device("c", 30, mbit=50))
    return make_plan(Strategy.parse(strategy), context_for(chain, env)), chain


def machine(store: ModelStore, work: Compiled, deadline: float = 10.0) -> Attempt:
    shapes = store.get("smallcnn").shapes(64, 64)
    channels = tuple(s.channels for s in shapes)
    return Attempt(work, "r1", ORCH, deadline, channels, 10, allowance=lambda step, device: 2.0)


def rows(program: str, sender: str, boundary: int, region: TileRegion, shape: tuple[int, ...], now: float) -> Arrived:
    return Arrived(RowsMessage(program, sender, boundary, region, PackedArray(np.zeros(shape, np.float32))), now)


def tile(sender: str, boundary: int, region: TileRegion, channels: int, program: str = "r1") -> Arrived:
    return rows(program, sender, boundary, region, (1, channels, region.height, region.width), 0.5)


def failure(program: str, device: str, why: str, now: float) -> Arrived:
    return Arrived(FailureMessage(program, device, 0, why), now)


# ---------------------------------------------------------------- every strategy, exactly
@pytest.mark.parametrize(("model", "size"), [("smallcnn", 64), ("vgg16", 64), ("resnet34", 64)])
def test_every_strategys_plan_runs_exactly_through_the_one_executor(
    store: ModelStore, references: References, model: str, size: int
) -> None:
    ref = references[(model, size, size)]
    for strategy in STRATEGY_NAMES:
        plan, _ = plan_of(store, strategy, model, size)
        logits = run_attempt(plan, store, ref.x, random.Random(strategy))
        assert_float32_faithful(logits, ref.logits32, ref.logits64, f"{model} {strategy}")


def test_gathering_plans_compile_to_programs_the_orchestrator_feeds(store: ModelStore) -> None:
    """modnn: every block's tiles go to the orchestrator, which forwards the next block's
    pieces; the first block's come with the programs. deepthings: pulled tiles, then the
    gateway on the orchestrator (VGG-16 has more than 16 layers)."""
    plan, _ = plan_of(store, "modnn")
    work = compile_plan(plan, ORCH)
    assert set(work.programs) == set(plan.devices) and work.tail_here
    assert set(work.carried) == {t.device for t in plan.blocks[0].tasks}
    assert sorted(work.collects) == [b.block.stop for b in plan.blocks]
    assert sorted(work.forwards) == [b.block.start for b in plan.blocks[1:]]
    deep, _ = plan_of(store, "deepthings", "vgg16", 64)
    work = compile_plan(deep, ORCH)
    assert not work.programs and len(work.handouts[0]) == 9 and set(work.local) == {deep.blocks[1].block.start}
    flow, _ = plan_of(store, "flow")
    work = compile_plan(flow, ORCH)
    assert not work.forwards and not work.handouts  # only the image, carried in the programs


# ---------------------------------------------------------------- the machine
def test_a_gathering_attempt_stitches_forwards_and_finishes(store: ModelStore) -> None:
    plan, chain = plan_of(store, "modnn")
    work = compile_plan(plan, ORCH)
    state = machine(store, work)
    actions = state.handle(Begin(0.0, DEVICES))
    assert {a.device for a in actions if isinstance(a, SendProgram)} == set(work.programs)
    assert not any(isinstance(a, SendRows) for a in actions)  # the first block's rows ride in the programs
    for k, block_plan in enumerate(plan.blocks):
        stop, channels = block_plan.block.stop, chain.shapes[block_plan.block.stop].channels
        first, *rest = block_plan.tasks
        got = state.handle(tile(first.device, stop, first.out_region, channels))
        assert isinstance(got[0], Keep)
        assert isinstance(state.handle(tile(first.device, stop, first.out_region, channels))[0], Ignore)  # twice
        if rest:
            assert isinstance(state.handle(tile(first.device, stop, rest[0].out_region, channels))[0], Ignore)
        for task in rest:
            got = state.handle(tile(task.device, stop, task.out_region, channels))
        if k < len(plan.blocks) - 1:
            assert {(a.forward.to, a.forward.region) for a in got if isinstance(a, SendRows)} == {
                (t.device, t.in_region) for t in plan.blocks[k + 1].tasks
            }
    assert isinstance(got[-1], Finish) and state.finished


def test_a_lost_program_restarts_from_the_last_map_held_whole(store: ModelStore) -> None:
    plan, chain = plan_of(store, "modnn")
    work = compile_plan(plan, ORCH)
    state = machine(store, work)
    state.handle(Begin(0.0, DEVICES))
    first = plan.blocks[0]
    for task in first.tasks:
        state.handle(tile(task.device, first.block.stop, task.out_region, chain.shapes[first.block.stop].channels))
    victim = plan.blocks[1].tasks[0].device
    actions = state.handle(failure("r1", victim, "boom", 1.0))
    release, give_up, restart = actions
    assert isinstance(release, Release) and {d for _, d in release.programs} == set(work.programs)
    assert give_up == GiveUp(frozenset({victim}), "boom") and restart == Restart(first.block.stop, "boom")
    assert state.over and state.handle(Tick(2.0, DEVICES)) == []
    late = tile(victim, first.block.stop, first.tasks[0].out_region, 1)
    assert state.handle(late) == [Ignore(victim, "the attempt is over")]


def test_a_bad_tile_an_offline_device_or_one_gone_before_the_start_end_the_attempt(store: ModelStore) -> None:
    plan, chain = plan_of(store, "modnn")
    work = compile_plan(plan, ORCH)
    task, stop = plan.blocks[0].tasks[0], plan.blocks[0].block.stop
    state = machine(store, work)
    state.handle(Begin(0.0, DEVICES))
    bad = tile(task.device, stop, task.out_region, chain.shapes[stop].channels + 1)
    assert isinstance(state.handle(bad)[-1], Restart) and task.device in state.failed
    state = machine(store, work)
    state.handle(Begin(0.0, DEVICES))
    actions = state.handle(Tick(1.0, DEVICES - {task.device}))
    assert any(isinstance(a, GiveUp) and a.gone for a in actions) and actions[-1] == Restart(0, actions[-1].why)
    state = machine(store, work)
    actions = state.handle(Begin(0.0, DEVICES - {task.device}))
    assert not any(isinstance(a, SendProgram) for a in actions) and isinstance(actions[-1], Restart)


def test_pulled_tiles_go_to_whoever_is_idle_and_come_back_when_lost(store: ModelStore) -> None:
    plan, _ = plan_of(store, "deepthings", "vgg16", 64)
    work = compile_plan(plan, ORCH)
    shapes = store.get("vgg16").shapes(64, 64)
    state = Attempt(work, "r1", ORCH, 10.0, tuple(s.channels for s in shapes), 1000, lambda step, device: 2.0)
    sent = [a for a in state.handle(Begin(0.0, DEVICES)) if isinstance(a, SendProgram)]
    assert sorted(s.device for s in sent) == ["a", "b", "c"] and all(s.carried for s in sent)
    assert len({s.program for s in sent}) == 3 and all(len(s.work.steps) == 1 for s in sent)
    stop, channels = plan.blocks[0].block.stop, shapes[plan.blocks[0].block.stop].channels
    done = sent[0]
    got = state.handle(tile(done.device, stop, done.work.steps[0].out_region, channels, done.program))
    assert isinstance(got[0], Keep) and [a.device for a in got if isinstance(a, SendProgram)] == [done.device]
    failed = sent[1]  # a device error: its tile is queued again, the device gets no more
    got = state.handle(failure(failed.program, failed.device, "boom", 1.0))
    assert GiveUp(frozenset({failed.device}), "boom") in got and failed.device in state.failed
    silent = sent[2]  # past its allowance: the same
    got = state.handle(Tick(2.5, DEVICES))
    assert any(isinstance(a, GiveUp) and silent.device in a.devices for a in got)
    assert not any(isinstance(a, SendProgram) and a.device in (failed.device, silent.device) for a in got)
    assert state.recovered == 2
    # only one device left, then none: the tiles that wait fail the request clearly
    assert isinstance(state.handle(Tick(3.0, frozenset()))[-1], Fail)


def test_the_gateway_runs_on_the_orchestrator_once_the_tiles_are_in(store: ModelStore) -> None:
    plan, _ = plan_of(store, "deepthings", "vgg16", 64)
    work = compile_plan(plan, ORCH)
    shapes = store.get("vgg16").shapes(64, 64)
    state = Attempt(work, "r1", ORCH, 10.0, tuple(s.channels for s in shapes), 1000, lambda step, device: 2.0)
    state.handle(Begin(0.0, frozenset({"a"})))
    stop = plan.blocks[0].block.stop
    got: list[object] = []
    for n, region in enumerate(work.collects[stop], start=1):
        got = state.handle(tile("a", stop, region, shapes[stop].channels, f"r1-{n}"))
    assert got[-1] == Compute(plan.blocks[1].block)
    assert state.handle(Computed(plan.blocks[1].block.stop, 1.0)) == [Finish()]


def test_a_late_attempt_blames_from_the_reports_and_restarts_with_more_time(store: ModelStore) -> None:
    plan, _ = plan_of(store, "flow")
    work = compile_plan(plan, ORCH)
    state = machine(store, work, deadline=1.0)
    state.handle(Begin(0.0, DEVICES))
    actions = state.handle(Tick(2.0, DEVICES))
    assert isinstance(actions[-1], Release) and actions[-1].report and state.late
    assert state.handle(rows("r1", "a", 1, TileRegion.of(0, 1, 0, 1), (1,), 2.1))
    first = next(iter(work.programs))
    for d, p in work.programs.items():  # the first never answers
        if d != first:
            assert state.handle(Arrived(ProgressMessage("r1", d, len(p.items), ()), 2.2)) == []
    got = state.handle(Tick(2.0 + REPORTS_S + 0.1, DEVICES))
    assert got == [GiveUp(frozenset({first}), got[0].why), Restart(0, got[0].why, late=True)]  # type: ignore[union-attr]


def test_a_plan_cannot_start_where_the_orchestrator_holds_nothing_whole(store: ModelStore) -> None:
    plan, _ = plan_of(store, "flow")
    assert not any(b.gathers and b.block.stop == 1 for b in plan.blocks)
    with pytest.raises(PlanningError, match="does not hold boundary"):
        compile_plan(plan, ORCH, start=1)
    gathered, _ = plan_of(store, "aofl")
    work = compile_plan(gathered, ORCH, start=gathered.blocks[0].block.stop)
    assert all(s.block.start >= gathered.blocks[0].block.stop for p in work.programs.values() for s in p.steps)
    assert FusedBlock(0, 1) not in work.local and ORCHESTRATOR not in work.programs
