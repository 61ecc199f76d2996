"""``flow``: plans whose rows stay on the devices, their programs, the device store, and faults.

The core test runs hand-made flow plans (random blocks, random partitions that move
between blocks, 1-row strips, devices idle in some blocks) through the devices' real
code (program check, store, step kernels) with every message through the wire codec in
a random order, and judges the model's answer against the float64 oracle.
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from edgeci_mqtt.core.blocks import FusedBlock, tile_input_region
from edgeci_mqtt.core.deadline import NEVER, Deadline
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.device.programs import ValidProgram, validate_program
from edgeci_mqtt.device.store import FlowStore
from edgeci_mqtt.errors import PlanningError, WireError
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.run import allowance
from edgeci_mqtt.planner.awas import auction_items, make_bid
from edgeci_mqtt.planner.costs import TaskWork, handoff_seconds
from edgeci_mqtt.planner.environment import DeviceView, Environment
from edgeci_mqtt.planner.flow import flow_block
from edgeci_mqtt.planner.overlap import overlapped
from edgeci_mqtt.planner.plan import BlockPlan, Plan
from edgeci_mqtt.planner.strategies import (
    PlanningContext,
    context_for,
    make_plan,
    whole_model_plan,
    whole_model_seconds,
)
from edgeci_mqtt.planner.strategy import FlowOptions, Strategy
from edgeci_mqtt.planner.tail import (
    TailPlan,
    TailWork,
    making_seconds,
    place_tail,
    placement_making_seconds,
    split_features,
    tail_to_prepare,
)
from edgeci_mqtt.sim.simulator import SimResult, simulate
from edgeci_mqtt.timeline import ORCHESTRATOR
from edgeci_mqtt.wire import (
    PackedArray,
    ProgramMessage,
    ProgramStep,
    RowsMessage,
    StepInput,
    StepSend,
    TailRole,
    decode,
    encode,
)
from tests.exactness import References, assert_float32_faithful
from tests.executor import ORCH, run_attempt
from tests.planning import device, environment, flat_profile

pytestmark = pytest.mark.pure

DEVICES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore(dict.fromkeys(("smallcnn", "vgg16", "resnet34")), seed=0)


def random_tail(features: int, devices: list[str], rng: random.Random) -> TailPlan:
    """The orchestrator, one device, or the first layer split over 2-3 devices and finished
    on the orchestrator or on one of them."""
    choice = rng.randrange(3)
    if choice == 0:
        return TailPlan()
    if choice == 1:
        return TailPlan(rng.choice(devices))
    names = rng.sample(devices, k=min(len(devices), rng.randint(2, 3)))
    cuts = sorted(rng.sample(range(1, features), k=len(names) - 1))
    parts = tuple((d, Span(a, b)) for d, a, b in zip(names, [0, *cuts], [*cuts, features], strict=True))
    return TailPlan(rng.choice([ORCHESTRATOR, *names]), parts)


def random_flow_plan(
    store: ModelStore, model: str, size: int, rng: random.Random, barrier: bool = False, short: bool = False
) -> Plan:
    """Random blocks, each cut into 1-4 random row bands among random devices, and a random
    tail; ``short``: blocks of one or two stages, every one cut among the same four devices
    in the same order and proportions (bands that stay put, with thin halos: interiors)."""
    held = store.get(model)
    chain = held.chain.spec(size, size)
    n = len(chain.stages)
    cuts = sorted(rng.sample(range(1, n), k=min(n - 1, rng.randint(1, 6))))
    shares = sorted(rng.sample(range(1, 100), k=3)) if short else []
    if short:
        cuts = list(range(rng.randint(1, 2), n, 2))
    blocks = [FusedBlock(a, b) for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    tail = random_tail(held.chain.tail_parts.features, list(DEVICES), rng)
    plans: list[BlockPlan] = []
    for block in blocks:
        height = chain.shapes[block.stop].height
        count = rng.randint(1, min(4, height))
        bounds = sorted(rng.sample(range(1, height), k=count - 1)) if count > 1 else []
        names = rng.sample(DEVICES, k=count)
        if short and height >= 8:
            bounds = sorted({max(1, min(height - 1, height * share // 100)) for share in shares})
            names = list(DEVICES[: len(bounds) + 1])
        runs = [(d, Span(a, b)) for d, a, b in zip(names, [0, *bounds], [*bounds, height], strict=True)]
        gather = block.stop == n and tail.on_orchestrator
        plans.append(flow_block(chain, block, runs, plans[-1] if plans else None, gather=gather))
    return Plan(
        strategy=Strategy("flow"),
        model=model,
        input_shape=chain.shapes[0],
        blocks=tuple(plans),
        tail_work=chain.tail_work,
        tail=tail,
        barrier=barrier,
        compress=True,
    )


@pytest.mark.parametrize(("model", "size", "seeds"), [("smallcnn", 64, 6), ("vgg16", 64, 3), ("resnet34", 64, 3)])
def test_random_flow_partitions_give_the_models_result(
    store: ModelStore, references: References, model: str, size: int, seeds: int
) -> None:
    ref = references[(model, size, size)]
    for seed in range(seeds):
        rng = random.Random(seed)
        plan = random_flow_plan(store, model, size, rng, barrier=seed % 2 == 1)
        logits = run_attempt(plan, store, ref.x, rng)
        assert_float32_faithful(logits, ref.logits32, ref.logits64, f"{model} seed {seed}")


def test_random_plans_cover_the_cases_that_matter(store: ModelStore) -> None:
    """The seeds above include bands that move between blocks, 1-row strips, idle devices,
    and every kind of tail placement."""
    moved = one_row = idle = False
    tails = set()
    for seed in range(6):
        plan = random_flow_plan(store, "smallcnn", 64, random.Random(seed))
        tail = plan.tail
        tails.add("orchestrator" if tail.on_orchestrator else "split" if tail.parts else "device")
        for previous, block in zip(plan.blocks, plan.blocks[1:], strict=False):
            moved |= any(p.source not in (t.device, ORCHESTRATOR) for t in block.tasks for p in t.inputs)
            idle |= set(previous.devices) != set(block.devices)
        one_row |= any(t.out_region.height == 1 for b in plan.blocks for t in b.tasks)
    assert moved and one_row and idle and tails == {"orchestrator", "split", "device"}


def test_the_tail_goes_where_it_is_cheapest(store: ModelStore) -> None:
    """VGG-16's classifier (411 MB in its first layer) leaves a slow orchestrator for a fast
    device; on devices as slow as the orchestrator it is split; a device without room for
    the weights never gets them."""
    vgg = TailWork.of(store.get("vgg16").chain.spec(224, 224).tail_work)
    final = 512 * 7 * 7 * 4
    link = Link(100.0, 1.0)

    def cluster(*shares: float, orchestrator: float = 0.1) -> Environment:
        views = tuple(DeviceView(n, flat_profile().scaled(c), link) for n, c in zip(DEVICES, shares, strict=False))
        return Environment(views, flat_profile().scaled(orchestrator), Link(1000.0, 0.1))

    plan, _ = place_tail(cluster(1.0, 0.01), vgg, final, {"a": final // 2, "b": final // 2}, orchestrator_holds=False)
    assert plan == TailPlan("a")
    plan, _ = place_tail(cluster(0.1, 0.1, 0.1, 0.1), vgg, final, dict.fromkeys(DEVICES, final // 4), False)
    assert len(plan.parts) >= 2 and plan.parts[-1][1].stop == vgg.features
    tight = cluster(1.0, 0.01)
    tight = replace(tight, devices=(replace(tight.devices[0], memory_bytes=1 << 20), tight.devices[1]))
    plan, _ = place_tail(tight, vgg, final, {"a": final}, orchestrator_holds=False)
    assert "a" not in plan.devices


def test_the_flow_plan_keeps_rows_on_devices_and_simulates(store: ModelStore) -> None:
    chain = store.get("vgg16").chain.spec(96, 96)
    env = environment(device("a", 100), device("b", 50), device("c", 25, mbit=20))
    ctx = context_for(chain, env)
    plan = make_plan(Strategy.parse("flow"), ctx)
    assert plan.auctioned and len(plan.devices) >= 2
    for k, block in enumerate(plan.blocks):
        last = k == len(plan.blocks) - 1
        for task in block.tasks:
            assert task.output == (ORCHESTRATOR if last and plan.tail.on_orchestrator else task.device)
            sources = {p.source for p in task.inputs}
            assert sources == {ORCHESTRATOR} if k == 0 else ORCHESTRATOR not in sources
    result = simulate(plan, env, TaskWork(chain.stages, chain.shapes))
    assert 0 < result.makespan_s < 60


def test_a_device_keeps_its_band_from_block_to_block(store: ModelStore) -> None:
    """Identical devices: the held-rows discount and the previous order keep each band put,
    so a block's input is mostly the device's own rows."""
    chain = store.get("vgg16").chain.spec(224, 224)
    env = environment(*(device(n, 5, mbit=100) for n in DEVICES))
    plan = make_plan(Strategy.parse("flow:sequential"), context_for(chain, env))  # a task per device and block
    orders = [[t.device for t in b.tasks] for b in plan.blocks if len(b.tasks) == len(DEVICES)]
    assert len(orders) >= 2 and all(order == orders[0] for order in orders)
    for block in plan.blocks[1:]:
        for task in block.tasks:
            own = sum(p.region.area for p in task.inputs if p.source == task.device)
            assert own >= 0.5 * task.in_region.area, (block.block, task)


# ---------------------------------------------------------------- the device store
def _program(steps: tuple[ProgramStep, ...], request: str = "r1", boundary: int = 0) -> ProgramMessage:
    return ProgramMessage(
        request=request,
        orchestrator=ORCH,
        model="smallcnn",
        digest="d",
        input_hw=(64, 64),
        steps=steps,
        expires_s=5.0,
        input_boundary=boundary,
    )


def _rows(request: str, sender: str, region: TileRegion, channels: int = 8) -> RowsMessage:
    data = np.ones((1, channels, region.height, region.width), dtype=np.float32)
    return RowsMessage(request, sender, 1, region, PackedArray(data))


def _store_with_program(store: ModelStore) -> tuple[FlowStore[ValidProgram], ProgramMessage, TileRegion]:
    held = store.get("smallcnn")
    shapes = held.shapes(64, 64)
    piece = TileRegion(Span(0, 2), Span(0, shapes[1].width))
    step = ProgramStep(FusedBlock(1, 2), TileRegion(Span(0, 1), Span(0, shapes[2].width)), (StepInput(piece, "b"),))
    program = _program((step,))
    flow: FlowStore[ValidProgram] = FlowStore("a", holding_bytes=1 << 20)
    return flow, program, piece


def test_rows_before_their_program_wait_and_late_rows_are_dropped(store: ModelStore) -> None:
    flow, program, piece = _store_with_program(store)
    shapes = store.get("smallcnn").shapes(64, 64)
    channels = shapes[1].channels
    assert not flow.add_rows(_rows("r1", "b", piece, channels), "b", 0.0)  # held: no program yet
    assert flow.install(program, shapes, None, 0.1)  # type: ignore[arg-type]
    ready = flow.next_step("r1", 0.1)
    assert ready is not None and ready.tile.shape == (1, channels, 2, piece.width)
    flow.computed("r1", 0, np.zeros((1, 1, 1, 1), dtype=np.float32))
    assert flow.requests() == [] and flow.stored_bytes == 0
    with pytest.raises(WireError, match="over here"):
        flow.add_rows(_rows("r1", "b", piece, channels), "b", 0.2)
    assert flow.counts["dropped_ended"] == 1


def test_the_store_refuses_rows_nobody_asked_for(store: ModelStore) -> None:
    flow, program, piece = _store_with_program(store)
    shapes = store.get("smallcnn").shapes(64, 64)
    channels = shapes[1].channels
    flow.install(program, shapes, None, 0.0)  # type: ignore[arg-type]
    with pytest.raises(WireError, match="no step"):
        flow.add_rows(_rows("r1", "c", piece, channels), "c", 0.0)  # right rows, wrong sender
    with pytest.raises(WireError, match="no step"):
        flow.add_rows(_rows("r1", "b", TileRegion(Span(0, 3), piece.cols), channels), "b", 0.0)
    with pytest.raises(WireError, match="not"):
        flow.add_rows(_rows("r1", "b", piece, channels + 1), "b", 0.0)  # wrong shape
    assert flow.counts["refused"] == 3 and flow.next_step("r1", 0.1) is None


def test_unknown_rows_are_bounded_and_expire(store: ModelStore) -> None:
    flow, _, piece = _store_with_program(store)
    big = _rows("ghost", "b", piece, 256)  # 256 x 2 x 64 floats = 128 KiB: 8 fill the 1 MiB holding area
    assert big.rows.array.nbytes == 128 << 10
    for _ in range(8):
        flow.add_rows(big, "b", 0.0)
    with pytest.raises(WireError, match="holding area is full"):
        flow.add_rows(big, "b", 0.0)
    assert flow.counts["dropped_unknown"] == 1 and flow.stored_bytes == 8 * big.rows.array.nbytes
    flow.expire(100.0)
    assert flow.stored_bytes == 0 and flow.counts["dropped_unknown"] == 9


def test_a_program_expires_and_a_release_drops_everything(store: ModelStore) -> None:
    flow, program, piece = _store_with_program(store)
    shapes = store.get("smallcnn").shapes(64, 64)
    flow.install(program, shapes, None, 0.0)  # type: ignore[arg-type]
    assert flow.expire(program.expires_s + 1.0) == ["r1"] and flow.requests() == []
    other = _program(program.steps, "r2")
    flow.install(other, shapes, None, 0.0)  # type: ignore[arg-type]
    flow.add_rows(_rows("r2", "b", piece, shapes[1].channels), "b", 0.0)
    assert flow.stored_bytes > 0 and flow.release("r2", "failed") and flow.stored_bytes == 0
    with pytest.raises(WireError, match="already given"):
        flow.install(other, shapes, None, 0.0)  # type: ignore[arg-type]


def test_a_device_drops_work_whose_clients_deadline_passed(store: ModelStore) -> None:
    """The client's deadline travels with the program, as seconds left; the device turns it
    into an instant on its own clock and drops the request there, ready step or not."""
    flow, program, piece = _store_with_program(store)
    shapes = store.get("smallcnn").shapes(64, 64)
    late = replace(program, request="late", deadline_s=0.5)  # expires_s is 5 s: the deadline comes first
    flow.install(late, shapes, None, 10.0)  # type: ignore[arg-type]
    assert flow.add_rows(_rows("late", "b", piece, shapes[1].channels), "b", 10.1)  # its step is ready
    assert flow.next_step("late", 10.6) is None and flow.ended("late") == "expired" and flow.stored_bytes == 0
    flow.install(replace(program, request="soon", deadline_s=0.5), shapes, None, 20.0)  # type: ignore[arg-type]
    assert flow.expire(20.4) == [] and flow.expire(20.6) == ["soon"]


def test_a_deadline_travels_as_seconds_left() -> None:
    assert Deadline.within(0.0, 5.0) == NEVER and NEVER.wire(5.0) == 0.0 and not NEVER.passed(1e12)
    soon = Deadline.within(2.0, 5.0)
    assert soon.left(6.0) == pytest.approx(1.0) and soon.wire(6.0) == pytest.approx(1.0)
    assert soon.passed(7.5) and soon.wire(7.5) > 0  # passed, yet not "none" on the wire
    assert soon.sooner(NEVER) == soon and Deadline.within(1.0, 5.0).sooner(soon) == Deadline(6.0)


# ---------------------------------------------------------------- program checks
def test_programs_that_cannot_run_are_refused(store: ModelStore) -> None:
    held = store.get("smallcnn")
    shapes = held.shapes(64, 64)
    width, out_width = shapes[1].width, shapes[2].width
    whole_in = TileRegion(Span(0, shapes[1].height), Span(0, width))
    out = TileRegion(Span(0, 4), Span(0, out_width))

    def check(*steps: ProgramStep, boundary: int = 0) -> None:
        program = _program(steps, boundary=boundary)
        validate_program(replace(program, digest=held.digest), "a", store, lambda *_: True)

    check(ProgramStep(FusedBlock(1, 2), out, (StepInput(whole_in, "b"),)))  # fine
    cases = {
        "do not tile": (
            StepInput(TileRegion(Span(0, 3), whole_in.cols), "b"),
            StepInput(TileRegion(Span(2, 9), whole_in.cols), "c"),
        ),
        "covering": (StepInput(TileRegion(Span(0, 1), whole_in.cols), "b"),),
        "no earlier step": (StepInput(whole_in, "a"),),
    }
    for why, inputs in cases.items():
        with pytest.raises(WireError, match=why):
            check(ProgramStep(FusedBlock(1, 2), out, inputs))
    with pytest.raises(WireError, match="cannot send"):
        check(ProgramStep(FusedBlock(1, 2), out, (StepInput(whole_in, "b"),), (StepSend(whole_in, "c"),)))
    check(ProgramStep(FusedBlock(1, 2), out, (StepInput(whole_in, ORCH),)), boundary=1)  # rows it forwards
    with pytest.raises(WireError, match="before the attempt's start"):
        check(ProgramStep(FusedBlock(1, 2), out, (StepInput(whole_in, ORCH),)), boundary=2)
    with pytest.raises(WireError, match="block order"):
        check(ProgramStep(FusedBlock(1, 2), out, (StepInput(whole_in, "b"),)), ProgramStep(FusedBlock(0, 1), out, ()))
    with pytest.raises(WireError, match="overlap"):  # a block's rows may come in several steps, each once
        step = ProgramStep(FusedBlock(1, 2), out, (StepInput(whole_in, "b"),))
        check(step, step)
    rows = [TileRegion(Span(r, r + 1), out.cols) for r in range(4)]
    need = [tile_input_region(held.chain.stages, shapes, FusedBlock(1, 2), r) for r in rows]
    cut = [ProgramStep(FusedBlock(1, 2), r, (StepInput(n, "b"),)) for r, n in zip(rows, need, strict=True)]
    check(*cut[:3])  # interior and two edges
    with pytest.raises(WireError, match="more than 3"):  # a hostile program cannot make the check quadratic
        check(*cut)


def test_a_flow_bid_prices_no_output_leaving_but_for_the_last_block(store: ModelStore) -> None:
    chain = store.get("vgg16").chain.spec(64, 64)
    costs = context_for(chain, environment(device("a"))).costs
    slow_link = device("a", 100, mbit=10)
    for block, leaves in ((FusedBlock(0, 4), False), (FusedBlock(28, len(chain.stages)), True)):
        items = list(auction_items(chain.shapes[block.stop]))
        gather, flow = (make_bid(slow_link, costs, block, items, f) for f in (False, True))
        out_bytes = costs.output_bytes(block, np.array([0]), np.array([items[0].stop]))[0]
        saved = gather.alone_s[0] - flow.alone_s[0] + handoff_seconds(slow_link)  # flow's messages cost CPU
        assert saved == pytest.approx(0.0 if leaves else out_bytes / slow_link.link.bytes_per_s)


def test_flow_options_switch_what_flow_adds(store: ModelStore) -> None:
    assert FlowOptions.parse("") == FlowOptions()
    assert FlowOptions.parse("barrier+raw+orchestrator-tail") == FlowOptions(True, False, False)
    with pytest.raises(PlanningError, match="unknown flow option"):
        FlowOptions.parse("turbo")
    with pytest.raises(PlanningError, match="takes no options"):
        Strategy.parse("edgeci:barrier")
    chain = store.get("vgg16").chain.spec(224, 224)
    ctx = context_for(chain, environment(*(device(n, 5, mbit=100) for n in DEVICES)))
    bare = make_plan(Strategy.parse("flow:barrier+raw+orchestrator-tail"), ctx)
    assert str(bare.strategy) == "flow:barrier+raw+orchestrator-tail" and bare.barrier and not bare.compress
    assert bare.tail.on_orchestrator and bare.blocks[-1].gathers
    full = make_plan(Strategy.parse("flow"), ctx)
    assert not full.barrier and full.compress
    work = TaskWork(chain.stages, chain.shapes)
    env = ctx.env
    assert _overlapping_blocks(simulate(bare, env, work)) == 0  # a barrier: block k+1 after all of block k
    assert _overlapping_blocks(simulate(replace(bare, barrier=False), env, work)) > 0


def _overlapping_blocks(result: SimResult) -> int:
    """Computes of a block that started before another device finished the block before it."""
    computes = [i for i in result.timeline if i.kind == "compute" and i.block is not None]
    ends: dict[int, float] = {}
    for i in computes:
        assert i.block is not None
        ends[i.block.stop] = max(ends.get(i.block.stop, 0.0), i.end)
    return sum(1 for i in computes if i.block is not None and i.start < ends.get(i.block.start, 0.0) - 1e-12)


def test_the_simulator_prices_compressed_rows(store: ModelStore) -> None:
    """Half-zero maps on slow links: compressed rows arrive sooner (fewer bytes, some CPU)."""
    chain = store.get("vgg16").chain.spec(224, 224, densities=(0.5,) * 32)
    env = environment(*(device(n, 5, mbit=20) for n in DEVICES))
    ctx = context_for(chain, env)
    work = TaskWork(chain.stages, chain.shapes)
    plan = make_plan(Strategy.parse("flow"), ctx)
    assert plan.compress and plan.densities
    timeline = simulate(plan, env, work).timeline
    assert {"encode", "decode"} <= {i.kind for i in timeline}
    raw = simulate(replace(plan, compress=False), env, work)
    assert simulate(plan, env, work).makespan_s < raw.makespan_s


def test_a_device_refuses_a_tail_beyond_the_memory_it_announced(store: ModelStore) -> None:
    """Its part of the tail, and the tail rows it is asked to make ahead, within its budget
    and the first layer's features."""
    held = store.get("smallcnn")
    final = held.shapes(64, 64)[-1]
    role = TailRole((StepInput(TileRegion.whole(final.height, final.width), "b"),), ORCH)
    program = replace(_program(()), digest=held.digest, tail=role)
    validate_program(program, "a", store, lambda *_: True)  # no budget announced: no limit
    validate_program(program, "a", store, lambda *_: True, tail_budget=10**9)
    with pytest.raises(WireError, match="exceed"):
        validate_program(program, "a", store, lambda *_: True, tail_budget=100)
    features = held.chain.tail_parts.features
    ahead = replace(program, tail=None, prepare=TailRows((Span(0, features),), rest=True))
    with pytest.raises(WireError, match="nothing to do"):  # rows to make come with work, never alone
        validate_program(ahead, "a", store, lambda *_: True)
    ahead = replace(ahead, tail=role)
    assert decode(encode(ahead)) == ahead
    validate_program(ahead, "a", store, lambda *_: True, tail_budget=10**9)
    with pytest.raises(WireError, match="tail rows to make exceed"):
        validate_program(ahead, "a", store, lambda *_: True, tail_budget=features * 4)
    with pytest.raises(WireError, match="beyond the first layer"):
        validate_program(replace(ahead, prepare=TailRows((Span(0, features + 1),))), "a", store, lambda *_: True)


def test_tail_splits_stay_within_the_first_layers_features() -> None:
    """Rounded shares of a small layer (10 features) once overshot it; cumulative rounding cannot."""
    shares = list(zip("abcd", (3.6, 3.6, 2.6, 0.2), strict=True))
    for k in (2, 3, 4):
        parts = split_features(10, shares[:k])
        assert parts[-1][1].stop == 10 and all(s.start < s.stop <= 10 for _, s in parts)
    work = TailWork(head=(), first=OpWork("fc", 2 * 32 * 10, 0, 32, 1), rest=(), features=10)
    views = tuple(DeviceView(n, flat_profile().scaled(c), Link(100.0, 1.0)) for n, c in shares)
    plan, _ = place_tail(Environment(views, flat_profile().scaled(0.01), Link(1000.0, 0.1)), work, 4096, {}, False)
    assert all(s.stop <= 10 for _, s in plan.parts)


def whole_chunks(rows: Span, total: int) -> Span:
    """The chunks of 256 rows a device makes to hold ``rows``."""
    return Span(rows.start // 256 * 256, min(total, -(-rows.stop // 256) * 256))


def test_held_tail_rows_are_counted_by_whole_chunks() -> None:
    """A device makes rows in chunks of 256: what it lacks for some features is the chunks
    they touch that no run it holds covers; runs must come in order and apart."""
    held = TailRows.of_chunks({0, 1, 3}, 1000, rest=False)
    assert held.first == (Span(0, 512), Span(768, 1000))
    assert held.missing_rows(Span(0, 512), 1000) == 0
    assert held.missing_rows(Span(500, 520), 1000) == 256  # chunk 2 (512-767)
    assert held.missing_rows(Span(0, 1000), 1000) == 256
    assert TailRows().missing_rows(Span(900, 1000), 1000) == 232  # the last chunk is short
    assert TailRows((Span(0, 100),)).missing_rows(Span(0, 50), 1000) == 256  # part of a chunk is not a chunk
    for bad in ((Span(0, 256), Span(256, 512)), (Span(300, 400), Span(0, 10)), (Span(-1, 3),), (Span(5, 5),)):
        with pytest.raises(PlanningError):
            TailRows(bad)


def test_tail_weights_a_device_lacks_are_priced_and_made_ahead(store: ModelStore) -> None:
    """Four devices as slow as the orchestrator split VGG-16's classifier when they hold its
    rows; cold, making them (a quarter of 411 MB each) costs more than the orchestrator
    running it all, so the tail stays there and the devices are told which rows to make
    when idle; holding them, they get the split. One chunk lacking costs one chunk."""
    work = TailWork.of(store.get("vgg16").chain.spec(224, 224).tail_work)
    final = 512 * 7 * 7 * 4
    held = dict.fromkeys(DEVICES, final // 4)

    def cluster(tails: dict[str, TailRows | None]) -> Environment:
        views = tuple(
            DeviceView(n, flat_profile(made=1e9).scaled(0.1), Link(100.0, 1.0), tail=tails.get(n)) for n in DEVICES
        )
        return Environment(views, flat_profile().scaled(0.1), Link(1000.0, 0.1))

    warm, _ = place_tail(cluster({}), work, final, held, False)
    assert len(warm.parts) == len(DEVICES)
    cold = cluster(dict.fromkeys(DEVICES, TailRows()))
    chosen, seconds = place_tail(cold, work, final, held, False)
    assert chosen.on_orchestrator
    prepare = tail_to_prepare(cold, work, final, held, False, chosen)
    assert prepare == tuple((d, TailRows((s,), rest=d == warm.finisher)) for d, s in warm.parts)
    made = {d: TailRows((whole_chunks(rows.first[0], work.features),), rows.rest) for d, rows in prepare}
    ready, ready_s = place_tail(cluster(made), work, final, held, False)
    assert ready == warm and ready_s < seconds
    assert tail_to_prepare(cluster(made), work, final, held, False, ready) == ()
    finisher, own = warm.finisher, dict(warm.parts)[warm.finisher]
    assert own.start == 0
    lacking = {**made, finisher: TailRows((Span(256, made[finisher].first[0].stop),), rest=True)}  # not chunk 0
    view = cluster(lacking).device(finisher)
    chunk = 256 * (work.first.depth + 1) * 4
    assert making_seconds(view, work, TailRows((own,), rest=True)) == pytest.approx(chunk / view.profile.rates["made"])
    assert placement_making_seconds(cluster(lacking), work, warm) == pytest.approx(chunk / view.profile.rates["made"])


def test_a_whole_request_sends_its_tail_where_it_ends_sooner(store: ModelStore) -> None:
    """A fast device holding the classifier runs it; cold, making 495 MB takes longer than
    the final map going to the orchestrator, so the tail runs there and the device is told to
    make it when idle; a slow device's tail runs on a faster orchestrator, holding it or not.
    ``local`` keeps it on its device whatever."""
    chain = store.get("vgg16").chain.spec(224, 224)
    whole = TailRows((Span(0, 4096),), rest=True)

    def ctx_with(tail: TailRows | None, gflops: float = 100.0) -> PlanningContext:
        view = replace(device("a", gflops), profile=flat_profile(gflops, made=1e9), tail=tail)
        return context_for(chain, environment(view, orchestrator_gflops=10.0))

    def placed(ctx: PlanningContext) -> TailPlan:
        return whole_model_plan(ctx, Strategy("replicas"), "a", whole_model_seconds(ctx)["a"]).tail

    assert placed(ctx_with(whole)) == TailPlan("a")
    cold = placed(ctx_with(TailRows()))
    assert cold.on_orchestrator and cold.prepare == (("a", whole),)
    assert whole_model_seconds(ctx_with(TailRows()))["a"] > whole_model_seconds(ctx_with(whole))["a"]
    slow = replace(ctx_with(whole), env=replace(ctx_with(whole).env, orchestrator=flat_profile().scaled(50.0)))
    assert placed(slow).on_orchestrator and not placed(slow).prepare
    for ctx in (slow, ctx_with(TailRows())):  # ``local`` is one device alone, the baseline: its tail stays there
        local = whole_model_plan(ctx, Strategy("local"), "a", whole_model_seconds(ctx, alone=True)["a"])
        assert local.tail == TailPlan("a") and make_plan(Strategy.parse("local"), ctx).tail == TailPlan("a")


def test_whole_requests_keep_the_tail_off_a_device_without_room(store: ModelStore) -> None:
    chain = store.get("vgg16").chain.spec(224, 224)
    roomy, tight = device("a", 10), replace(device("b", 10), memory_bytes=0)
    ctx = context_for(chain, environment(roomy, tight))
    seconds = whole_model_seconds(ctx)
    assert whole_model_plan(ctx, Strategy("replicas"), "a", seconds["a"]).tail == TailPlan("a")
    on_b = whole_model_plan(ctx, Strategy("replicas"), "b", seconds["b"])
    assert on_b.tail.on_orchestrator and on_b.blocks[-1].gathers


def test_a_whole_request_runs_in_steps_that_keep_its_rows_on_its_device(store: ModelStore) -> None:
    """Cut into the split plan's blocks, a whole request is one device's chain of steps: each
    reads only what that device computed, and only the last output leaves it (for the tail)."""
    chain = store.get("vgg16").chain.spec(224, 224)
    roomy, tight = device("a", 10), replace(device("b", 10), memory_bytes=0)
    ctx = context_for(chain, environment(roomy, tight))
    cuts = [b.block for b in make_plan(Strategy.parse("flow"), ctx).blocks]
    assert len(cuts) > 1
    seconds = whole_model_seconds(ctx)
    for name, kept in (("a", True), ("b", False)):
        plan = whole_model_plan(ctx, Strategy("flow"), name, seconds[name], cuts)
        assert [b.block for b in plan.blocks] == cuts and plan.devices == (name,)
        for k, step in enumerate(plan.blocks):
            (task,) = step.tasks
            assert all(p.source == (name if k else ORCHESTRATOR) for p in task.inputs)
            assert task.output == (name if kept or step is not plan.blocks[-1] else ORCHESTRATOR)


def test_an_attempt_after_a_missed_deadline_waits_twice_as_long() -> None:
    """Five times the prediction, at least the minimum, at most the cap; doubled for each
    earlier attempt whose devices were late (busy, perhaps, rather than lost)."""
    assert allowance(1.0, 3.0, 0) == pytest.approx(5.0)
    assert allowance(0.1, 3.0, 0) == pytest.approx(3.0)
    assert [allowance(1.2, 3.0, late) for late in (0, 1, 2)] == pytest.approx([6.0, 12.0, 24.0])
    assert allowance(100.0, 3.0, 2) == pytest.approx(300.0)


def test_a_tail_split_in_use_is_kept_until_another_is_clearly_cheaper(store: ModelStore) -> None:
    """Its devices hold its classifier rows; a speed re-announced a little differently would
    move the split's edges and make them draw rows they lack."""
    work = TailWork.of(store.get("vgg16").chain.spec(224, 224).tail_work)

    def place(speeds: dict[str, float], keep: TailPlan | None = None) -> TailPlan:
        views = tuple(DeviceView(n, flat_profile().scaled(c), Link(100.0, 1.0)) for n, c in speeds.items())
        env = Environment(views, flat_profile().scaled(0.01), Link(1000.0, 0.1))
        return place_tail(env, work, 100_000, {}, False, keep=keep)[0]

    speeds = {"a": 0.3, "b": 0.25, "c": 0.2}
    first = place(speeds)
    assert len(first.parts) == 3
    nudged = {**speeds, "b": 0.27}
    assert place(nudged) != first  # without it, the edges move
    assert place(nudged, keep=first) == first
    assert place({**speeds, "c": 1.0}, keep=first) != first  # clearly cheaper: a new split
    assert place({"a": 0.3, "b": 0.25}, keep=first).devices == ("a", "b")  # its device left


@pytest.mark.parametrize(("model", "seeds"), [("smallcnn", 6), ("vgg16", 2), ("resnet34", 2)])
def test_overlapped_random_partitions_give_the_models_result(
    store: ModelStore, references: References, model: str, seeds: int
) -> None:
    """Every task that reads another device's rows cut into its interior (first) and its
    edges, and the first block's into an upper and a lower band, however much that
    recomputes: the same rows on the same devices, the interior reading only the device's
    own rows, the upper band first, and the model's answer through the executor."""
    ref = references[(model, 64, 64)]
    chain = store.get(model).chain.spec(64, 64)
    env = environment(*(device(n) for n in DEVICES))
    costs = context_for(chain, env).costs
    cut = 0
    for seed in range(seeds):
        rng = random.Random(seed)
        plan = random_flow_plan(store, model, 64, rng, short=True)
        blocks = overlapped(chain, costs, env, plan.blocks, force=True)
        for before, after in zip(plan.blocks, blocks, strict=True):
            rows = {
                d: sorted((t.out_region.rows for t in after.tasks if t.device == d), key=lambda s: s.start)
                for d in after.devices
            }
            assert {d: Span(r[0].start, r[-1].stop) for d, r in rows.items()} == {
                t.device: t.out_region.rows for t in before.tasks
            }
            for name, parts in rows.items():
                first = next(t for t in after.tasks if t.device == name)
                if before.block.start == 0:  # the image in two bands, the upper first
                    assert len(parts) == (2 if sum(r.size for r in parts) > 1 else 1)
                    assert first.out_region.rows == parts[0] and {p.source for p in first.inputs} == {ORCHESTRATOR}
                elif len(parts) > 1:  # cut: its first task is the interior, reading its own rows only
                    assert {p.source for p in first.inputs} == {name}, (before.block, first)
                    assert first.out_region.rows not in (parts[0], parts[-1]) or len(parts) == 2
            cut += len(after.tasks) - len(before.tasks)
        logits = run_attempt(replace(plan, blocks=tuple(blocks), overlap=True, bands=True), store, ref.x, rng)
        assert_float32_faithful(logits, ref.logits32, ref.logits64, f"{model} seed {seed}, overlapped")
    assert cut > 0
