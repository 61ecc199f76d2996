"""The discrete-event simulator against hand-computed timelines."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.link import Link, Medium
from edgeci_mqtt.core.work import OpWork
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.planner.costs import TaskWork
from edgeci_mqtt.planner.environment import MESSAGE_OPS, DeviceView, Environment
from edgeci_mqtt.planner.plan import BlockPlan, Plan, Task, TaskInput
from edgeci_mqtt.planner.strategies import context_for, make_plan
from edgeci_mqtt.planner.strategy import Strategy
from edgeci_mqtt.planner.tail import TailPlan
from edgeci_mqtt.sim.simulator import AUCTION_ROUND_OPS, AWARD_OPS_PER_BID, simulate
from edgeci_mqtt.timeline import ORCHESTRATOR
from tests.planning import device, environment, flat_profile

GATHERED = Strategy("edgeci")
"""The strategy hand-made plans that gather on the orchestrator are labelled with (the simulator reads none)."""
pytestmark = pytest.mark.pure

RELU_RATE = 20e9  # bytes/s of flat_profile's elementwise ops
OVERHEAD = 1e-5
INTAKE = MESSAGE_OPS * OVERHEAD + 2 * 4 / RELU_RATE
"""The orchestrator's CPU for a request whose image is one float32 (a hand-made plan's)."""


def relu_work(seconds: float) -> tuple[OpWork, ...]:
    """Work that takes ``seconds`` (plus the op overhead) on a flat profile."""
    return (OpWork("relu", 0, round(seconds * RELU_RATE)),)


def one_block_plan(tasks: Sequence[Task], dispatch: str = "static", tail_s: float = 0.0) -> Plan:
    tail = (OpWork("fc", 0, round(tail_s * RELU_RATE)),) if tail_s else ()
    block = BlockPlan(FusedBlock(0, 1), tuple(tasks), dispatch=dispatch)  # type: ignore[arg-type]
    return Plan(strategy=GATHERED, model="none", input_shape=FeatureShape(1, 1, 1), blocks=(block,), tail_work=tail)


def tile(i: int) -> TileRegion:
    return TileRegion.of(i, i + 1, 0, 1)


def gathered(device: str, i: int, in_bytes: int, out_bytes: int) -> Task:
    """Row ``i`` of a one-stage block, fed by the orchestrator and stitched there."""
    return Task(device, tile(i), in_bytes, out_bytes, (TaskInput(0, tile(i), ORCHESTRATOR),))


def test_one_task_timeline_is_exact() -> None:
    view = DeviceView("a", flat_profile(), Link(8.0, 1.0))  # 1e6 B/s, 1 ms
    env = Environment((view,), flat_profile(), Link(80.0, 0.5))  # 1e7 B/s, 0.5 ms
    plan = one_block_plan([gathered("a", 0, 1000, 500)], tail_s=0.02)
    result = simulate(plan, env, lambda block, region: relu_work(0.01))
    message = MESSAGE_OPS * OVERHEAD  # each end of every message: packing it, unpacking it
    prepare = INTAKE + 2 * 1000 / RELU_RATE + message  # the request in, its 1x1x1 float32 image copied out
    down = prepare + (1000 + 256) / 1e6 + 1.5e-3 + message  # the device link is the slower hop
    computed = down + OVERHEAD + 0.01
    up = computed + message + (500 + 256) / 1e6 + 1.5e-3 + message
    merged = up + 2 * 500 / RELU_RATE
    assert result.block_ends_s == pytest.approx((merged,), rel=1e-12)
    assert result.makespan_s == pytest.approx(merged + OVERHEAD + 0.02 + message, rel=1e-12)
    kinds = [(i.resource, i.kind) for i in result.timeline]
    assert kinds == [
        (ORCHESTRATOR, "intake"),
        (ORCHESTRATOR, "prepare"),
        (ORCHESTRATOR, "encode"),
        ("a", "receive"),
        ("a", "decode"),
        ("a", "compute"),
        ("a", "encode"),
        ("a", "send"),
        (ORCHESTRATOR, "decode"),
        (ORCHESTRATOR, "merge"),
        (ORCHESTRATOR, "tail"),
        (ORCHESTRATOR, "answer"),
    ]


def test_an_auctioned_plan_first_waits_for_every_bid() -> None:
    """Calls down, bids priced, bids up (one hand-computed round trip), award, then the block."""
    slow = DeviceView("slow", flat_profile(), Link(8.0, 10.0))  # 1e6 B/s, 10 ms
    fast = DeviceView("fast", flat_profile(), Link(80.0, 1.0))
    env = Environment((fast, slow), flat_profile(), Link(800.0, 0.0))
    tasks = [gathered("fast", 0, 1000, 500), gathered("slow", 1, 1000, 500)]
    plain = one_block_plan(tasks)
    auctioned = dataclasses.replace(plain, auctioned=True)
    work = lambda block, region: relu_work(0.01)  # noqa: E731
    result = simulate(auctioned, env, work)
    call = (200 + 256) / 1e8 + (200 + 256) / 1e6 + 10e-3  # behind the fast call on the broker link
    bids = AUCTION_ROUND_OPS * OVERHEAD
    back = (2 * 20 + 256) / 1e6 + 10e-3  # two items (rows), priced twice each
    awarded = INTAKE + call + bids + back + AWARD_OPS_PER_BID * 2 * OVERHEAD  # the calls go once the request is in
    auction = [i for i in result.timeline if i.kind == "auction"]
    assert {i.resource for i in auction} == {ORCHESTRATOR, "fast", "slow"}
    assert max(i.end for i in auction) == pytest.approx(awarded, rel=1e-9)
    first_prepare = min(i.start for i in result.timeline if i.kind == "prepare")
    assert first_prepare == pytest.approx(awarded, rel=1e-9)
    assert result.makespan_s > simulate(plain, env, work).makespan_s + call + back


def test_the_auction_waits_only_for_devices_the_plan_uses() -> None:
    """As the runtime: a far-away device the plan leaves idle does not delay the first block."""
    fast = DeviceView("fast", flat_profile(), Link(80.0, 1.0))
    ghost = DeviceView("ghost", flat_profile(0.001), Link(0.1, 500.0))
    plan = dataclasses.replace(one_block_plan([gathered("fast", 0, 1000, 500)]), auctioned=True)
    work = lambda block, region: relu_work(0.01)  # noqa: E731
    alone = simulate(plan, Environment((fast,), flat_profile(), Link(800.0, 0.0)), work)
    with_ghost = simulate(plan, Environment((fast, ghost), flat_profile(), Link(800.0, 0.0)), work)
    assert with_ghost.makespan_s < alone.makespan_s + 2 * AWARD_OPS_PER_BID * OVERHEAD


def test_nothing_to_auction_costs_nothing() -> None:
    block = BlockPlan(FusedBlock(0, 1), (gathered("", 0, 0, 0),), placement="orchestrator")
    plan = Plan(strategy=GATHERED, model="none", input_shape=FeatureShape(1, 1, 1), blocks=(block,), tail_work=())
    env = Environment((DeviceView("a", flat_profile(), Link(8.0, 10.0)),), flat_profile(), Link(80.0, 0.0))
    work = lambda block, region: relu_work(0.01)  # noqa: E731
    auctioned = simulate(dataclasses.replace(plan, auctioned=True), env, work)
    assert auctioned.makespan_s == simulate(plan, env, work).makespan_s


def test_the_broker_link_is_shared() -> None:
    """Two inputs through a broker link as slow as the device links: the second waits."""
    views = tuple(DeviceView(n, flat_profile(), Link(8.0, 0.0)) for n in "ab")
    env = Environment(views, flat_profile(), Link(8.0, 0.0))
    plan = one_block_plan([gathered(n, i, 744, 0) for i, n in enumerate("ab")])
    result = simulate(plan, env, lambda block, region: relu_work(0.0))
    receive = {i.resource: i for i in result.timeline if i.kind == "receive"}
    assert receive["a"].end - receive["a"].start == pytest.approx(1e-3)
    assert receive["b"].start == pytest.approx(receive["a"].end)
    assert receive["b"].end == pytest.approx(receive["a"].end + 1e-3)


def test_a_shared_medium_is_one_more_hop_its_devices_share() -> None:
    """Three inputs of 1 ms each on their own links: the two devices behind a medium as
    slow as their links wait for one another there; the third does not."""
    wifi = Medium("wifi", 8.0)
    views = tuple(DeviceView(n, flat_profile(), Link(8.0, 0.0, wifi if n in "ab" else None)) for n in "abc")
    env = Environment(views, flat_profile(), Link(8000.0, 0.0))
    plan = one_block_plan([gathered(n, i, 744, 0) for i, n in enumerate("abc")])
    result = simulate(plan, env, lambda block, region: relu_work(0.0))
    receive = {i.resource: i for i in result.timeline if i.kind == "receive"}
    first, second = sorted((receive["a"], receive["b"]), key=lambda i: i.end)
    assert first.end - first.start == pytest.approx(1e-3, rel=1e-3)
    assert second.end == pytest.approx(first.end + 1e-3, rel=1e-3)  # queued behind the first on the medium
    assert receive["c"].end - receive["c"].start == pytest.approx(1e-3, rel=1e-3)
    sent = next(i for i in result.timeline if i.resource == ORCHESTRATOR and i.kind == "encode" and i.region == tile(2))
    assert receive["c"].start == pytest.approx(sent.end)  # not queued behind a and b


def test_pulled_tiles_go_to_whoever_is_idle() -> None:
    """Three 1-second tiles, a device twice as slow: the fast one pulls the third."""
    link = Link(1e6, 0.0)
    views = (DeviceView("fast", flat_profile(), link), DeviceView("slow", flat_profile().scaled(0.5), link))
    env = Environment(views, flat_profile(), link)
    plan = one_block_plan([gathered("", i, 8, 8) for i in range(3)], dispatch="pull")
    result = simulate(plan, env, lambda block, region: relu_work(1.0))
    computed = [i.resource for i in result.timeline if i.kind == "compute"]
    assert computed.count("fast") == 2 and computed.count("slow") == 1
    assert result.makespan_s == pytest.approx(2.0, abs=0.01)


def test_orchestrator_blocks_run_on_the_orchestrator() -> None:
    env = environment(device("a"))
    block = BlockPlan(FusedBlock(0, 1), (gathered("", 0, 0, 0),), placement="orchestrator")
    plan = Plan(strategy=GATHERED, model="none", input_shape=FeatureShape(1, 1, 1), blocks=(block,), tail_work=())
    result = simulate(plan, env, lambda b, r: relu_work(0.5))
    assert [i.kind for i in result.timeline] == ["intake", "gateway", "tail", "answer"]
    assert result.makespan_s == pytest.approx(INTAKE + 0.5 + OVERHEAD + MESSAGE_OPS * OVERHEAD)  # no tail work


def test_a_one_device_cluster_prices_every_strategy_alike(chains: dict[str, StageChain]) -> None:
    """One device: every gathering plan is one block on it (MoDNN's one per layer), priced
    the same without its auction; ``local`` runs the tail there too (the orchestrator is slower),
    so it only differs by the final map going to the orchestrator (and the tail
    running there) versus the logits."""
    chain = chains["smallcnn"]
    env = environment(device("only", 10.0, mbit=100.0, latency_ms=2.0), broker_mbit=1000.0)
    env = dataclasses.replace(env, orchestrator=env.orchestrator.scaled(0.1))
    ctx = context_for(chain.spec(64, 64), env)
    work = TaskWork(ctx.chain.stages, ctx.chain.shapes)
    local = make_plan(Strategy.parse("local"), ctx)
    assert local.tail == TailPlan("only") and local.devices == ("only",)
    gathered = []
    for strategy in ("edgeci", "aofl", "modnn"):
        plan = make_plan(Strategy.parse(strategy), ctx)
        assert {t.device for b in plan.blocks for t in b.tasks} == {"only"}
        if strategy != "modnn":  # MoDNN syncs after every layer by design
            assert len(plan.blocks) == 1
            gathered.append(simulate(dataclasses.replace(plan, auctioned=False), env, work).makespan_s)
    assert gathered[0] == pytest.approx(gathered[1], rel=1e-9)
    edgeci = simulate(make_plan(Strategy.parse("edgeci"), ctx), env, work).makespan_s
    assert edgeci > gathered[0] + 2 * 2e-3  # its auction: one round trip before the block
    kept = dataclasses.replace(
        make_plan(Strategy.parse("aofl"), ctx),
        blocks=local.blocks,
        tail=TailPlan("only"),
    )
    assert simulate(kept, env, work).makespan_s == pytest.approx(simulate(local, env, work).makespan_s, rel=1e-9)


def test_tasks_fed_by_devices_start_when_their_own_inputs_are_ready() -> None:
    """Rows kept on the devices: no barrier between the blocks.

    Block 0: ``a`` computes row 0 quickly and ``b`` row 1 slowly, each keeping its row.
    Block 1: ``a`` needs only its own row, so it goes on at once; ``b`` needs row 0 from
    ``a`` (device -> broker -> device, two messages' worth of time) and its own row 1."""
    views = tuple(DeviceView(n, flat_profile(), Link(8.0, 1.0)) for n in "ab")  # 1e6 B/s, 1 ms
    env = Environment(views, flat_profile(), Link(80.0, 0.5))  # 1e7 B/s, 0.5 ms
    first, second = FusedBlock(0, 1), FusedBlock(1, 2)
    kept_a = Task("a", tile(0), 1000, 500, (TaskInput(0, tile(0), ORCHESTRATOR),), output="a")
    kept_b = Task("b", tile(1), 1000, 500, (TaskInput(0, tile(1), ORCHESTRATOR),), output="b")
    own = Task("a", tile(0), 500, 500, (TaskInput(1, tile(0), "a"),))
    halo = Task("b", tile(1), 1000, 500, (TaskInput(1, tile(0), "a"), TaskInput(1, tile(1), "b")))
    blocks = (BlockPlan(first, (kept_a, kept_b)), BlockPlan(second, (own, halo)))
    plan = Plan(strategy=Strategy("flow"), model="none", input_shape=FeatureShape(1, 2, 1), blocks=blocks, tail_work=())
    slow = {(first, tile(1))}
    result = simulate(plan, env, lambda block, region: relu_work(1.0 if (block, region) in slow else 0.01))
    compute = {(i.resource, i.block): i for i in result.timeline if i.kind == "compute"}
    a0, a1, b0, b1 = compute["a", first], compute["a", second], compute["b", first], compute["b", second]
    cpu = MESSAGE_OPS * flat_profile().op_overhead_s  # a message's CPU on each end
    encode = next(i for i in result.timeline if i.resource == "a" and i.kind == "encode" and i.block == second)
    assert (encode.start, encode.end) == (a0.end, pytest.approx(a0.end + cpu, rel=1e-12))  # rows out first
    assert a1.start == encode.end < 0.1 < b0.end  # then a's own row: no transfer, no waiting for b
    send = next(i for i in result.timeline if i.resource == "a" and i.kind == "send" and i.block == second)
    receive = next(i for i in result.timeline if i.resource == "b" and i.kind == "receive" and i.block == second)
    message = (500 + 256) / 1e6  # the device links are the slower hop both ways
    assert (send.start, send.note, receive.note) == (encode.end, "to b", "from a")
    assert send.end == pytest.approx(encode.end + message, rel=1e-12)
    assert receive.start == pytest.approx(send.end + 1.5e-3, rel=1e-12)  # stored at the broker, then sent on
    decode = next(i for i in result.timeline if i.resource == "b" and i.kind == "decode" and i.block == second)
    assert decode.start == b0.end > receive.end + 1.5e-3  # b's CPU was busy with its own slow row
    assert b1.start == decode.end  # b waits for its own slow row, not for a barrier
    merges = [i for i in result.timeline if i.kind == "merge"]
    assert [(i.block, i.region) for i in merges] == [(second, tile(0)), (second, tile(1))]  # block 0 stays put
    assert not any(i.kind == "prepare" and i.block == second for i in result.timeline)
    assert result.block_ends_s == (b0.end, merges[-1].end)
    assert result.makespan_s == pytest.approx(merges[-1].end + cpu, rel=1e-12)  # the (empty) tail, the answer


def test_the_image_goes_out_in_bands_and_each_device_starts_on_its_upper_one() -> None:
    """As the runtime sends it: each program carries its device's first piece of the image, the
    lower bands follow once every program is out. So a device with bands starts computing
    sooner than without (whether the plan ends sooner is the choice's to judge: the rows both
    bands read travel twice)."""
    from edgeci_mqtt.models import skeleton_chain
    from edgeci_mqtt.planner.overlap import overlapped

    env = environment(device("a", 2.0, mbit=4.0), device("b", 2.0, mbit=4.0), broker_mbit=8.0)
    ctx = context_for(skeleton_chain("smallcnn").spec(128, 128), env)
    plain = make_plan(Strategy.parse("flow:sequential+unbanded"), ctx)
    blocks = overlapped(ctx.chain, ctx.costs, env, plain.blocks, halo=False, force=True)
    banded = dataclasses.replace(plain, blocks=tuple(blocks), bands=True)
    assert len(banded.blocks[0].tasks) == 2 * len(plain.blocks[0].tasks)
    work = TaskWork(ctx.chain.stages, ctx.chain.shapes)
    runs = {name: simulate(plan, env, work) for name, plan in (("plain", plain), ("banded", banded))}
    prepares = [i for i in runs["banded"].timeline if i.resource == ORCHESTRATOR and i.kind == "prepare"]
    uppers = {t.device: t.out_region for t in reversed(banded.blocks[0].tasks)}  # each device's first task
    assert [(i.note, i.region) for i in prepares[:2]] == sorted(uppers.items())  # the carried pieces go first

    def first_compute(run: str, name: str) -> float:
        return min(i.start for i in runs[run].timeline if i.resource == name and i.kind == "compute")

    assert all(first_compute("banded", d) < first_compute("plain", d) for d in "ab")
