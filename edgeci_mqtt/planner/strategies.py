"""Every strategy of docs/PLANNER.md, each turning the same inputs into a :class:`Plan`.

``edgeci``: DPFL over the AWAS estimate, then real AWAS auctions on the chosen blocks.
The baselines follow their papers (docs/PLANNER.md lists each parameter and source):

* ``local``: the whole model, tail included, on the single device that finishes it first.
* ``replicas``: data parallelism for streams: each request whole on one device, the one
  that would finish it first given the work already handed out.
* ``modnn`` (MoDNN, DATE'17): no fusion, a sync after every layer (a weight layer with
  the BN/ReLU/pooling that follow it); 1-D rows in proportion to device speed, static.
* ``deepthings`` (DeepThings, TCAD'18): the first 16 layers fused and cut into an equal
  3x3 grid handed out by work stealing (idle devices pull the next tile); the remaining
  layers run on the gateway (the orchestrator).
* ``aofl`` (AOFL, SEC'19): dynamic programming over fusion points with 1-D rows in
  proportion to device speed on every device, static.

``flow``: EdgeCI with the rows kept on the devices (:mod:`edgeci_mqtt.planner.flow`):
DPFL over the flow estimate (halo, not scatter and gather), then AWAS auctions whose
bids price the input as arriving, minus what a device already holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from edgeci_mqtt.core.blocks import FusedBlock, TileGrid
from edgeci_mqtt.core.chain import ChainSpec
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.stages import BYTES_PER_ELEMENT, Stage
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.planner.awas import Bid, auction_items, award, award_tasks, make_bid
from edgeci_mqtt.planner.costs import RowModel, intake_seconds, link_seconds, make_task, message_seconds
from edgeci_mqtt.planner.dpfl import BlockEstimator, best_segmentation
from edgeci_mqtt.planner.environment import MESSAGE_OVERHEAD_BYTES, DeviceView, Environment
from edgeci_mqtt.planner.flow import flow_block, flow_blocks
from edgeci_mqtt.planner.overlap import with_overlap
from edgeci_mqtt.planner.plan import BlockPlan, Plan, Task
from edgeci_mqtt.planner.strategy import Strategy, StrategyName
from edgeci_mqtt.planner.tail import LOGITS_BYTES, TailPlan, TailWork, fits, making_seconds

__all__ = [
    "DEEPTHINGS_GRID",
    "DEEPTHINGS_LAYERS",
    "PlanningContext",
    "context_for",
    "darknet_layers",
    "make_plan",
    "proportional_rows",
    "whole_model_plan",
    "whole_model_seconds",
]

DEEPTHINGS_LAYERS = 16
"""DeepThings fuses the first 16 layers of YOLOv2 (conv and max-pool layers counted)."""
DEEPTHINGS_GRID = TileGrid(3, 3)
"""DeepThings' default fused tile partition."""


@dataclass(frozen=True)
class PlanningContext:
    """Everything a strategy needs: the model's chain at one input size, and the cluster.

    ``rows`` prices strips; keep one per model and input size and pass it to every
    re-plan, since it caches each device profile's stage prices.
    """

    chain: ChainSpec
    env: Environment
    costs: RowModel

    def __post_init__(self) -> None:
        if not self.env.devices:
            raise PlanningError("no devices to plan for")

    @cached_property
    def estimator(self) -> BlockEstimator:
        return BlockEstimator(self.costs, self.env)

    @cached_property
    def flow_estimator(self) -> BlockEstimator:
        return BlockEstimator(self.costs, self.env, flow=True)

    def task(self, block: FusedBlock, out_region: TileRegion, device: str) -> Task:
        return make_task(self.chain.stages, self.chain.shapes, block, out_region, device)

    @cached_property
    def request_s(self) -> float:
        """The orchestrator's CPU for the request itself, however it is served: taking it in
        (its image copied out) and its answer out."""
        shape, orchestrator = self.chain.shapes[0], self.env.orchestrator
        image = shape.channels * shape.height * shape.width * BYTES_PER_ELEMENT
        return intake_seconds(orchestrator, image) + message_seconds(orchestrator)

    def plan(
        self,
        strategy: Strategy,
        blocks: Sequence[BlockPlan],
        predicted_s: float,
        auctioned: bool = False,
        tail: TailPlan | None = None,
        barrier: bool = False,
        compress: bool = False,
    ) -> Plan:
        chain = self.chain
        return Plan(
            strategy=strategy,
            model=chain.model,
            input_shape=chain.shapes[0],
            blocks=tuple(blocks),
            tail_work=chain.tail_work,
            predicted_s=predicted_s,
            auctioned=auctioned,
            tail=tail or TailPlan(),
            barrier=barrier,
            compress=compress,
            densities=chain.densities,
        )


def context_for(chain: ChainSpec, env: Environment, costs: RowModel | None = None) -> PlanningContext:
    """A planning context for ``chain`` (reusing ``costs`` if it prices the same chain)."""
    if costs is None or tuple(costs.stages) != chain.stages or tuple(costs.shapes) != chain.shapes:
        costs = RowModel(chain.stages, chain.shapes)
    return PlanningContext(chain, env, costs)


def proportional_rows(height: int, weights: dict[str, float]) -> list[tuple[str, Span]]:
    """Contiguous row runs with sizes proportional to ``weights`` (largest remainder)."""
    total = sum(weights.values())
    exact = {name: height * w / total for name, w in weights.items()}
    counts = {name: int(v) for name, v in exact.items()}
    for name in sorted(exact, key=lambda n: exact[n] - counts[n], reverse=True)[: height - sum(counts.values())]:
        counts[name] += 1
    runs, start = [], 0
    for name in weights:
        if counts[name]:
            runs.append((name, Span(start, start + counts[name])))
            start += counts[name]
    return runs


def _strips(ctx: PlanningContext, block: FusedBlock, runs: Sequence[tuple[str, Span]]) -> BlockPlan:
    width = ctx.chain.shapes[block.stop].width
    return BlockPlan(block, tuple(ctx.task(block, TileRegion(rows, Span(0, width)), d) for d, rows in runs))


@dataclass(frozen=True)
class _WholeTail:
    """Where a whole request on one device runs its tail, and what that costs."""

    here: bool
    """On the device (else the final map goes to the orchestrator, which runs it)."""
    back: float
    """Bytes the device sends back: the logits, or the final map."""
    seconds: float
    prepare: tuple[tuple[str, TailRows], ...] = ()
    """The device's tail weights to make when idle, where holding them would put it here."""


def _on_its_own(view: DeviceView) -> DeviceView:
    """``view`` as a whole request sees it: the only device of the request, so the only one
    moving bytes over its medium, which it has to itself (a split plan's devices share it)."""
    return replace(view, sharing=1)


def _whole_tail(ctx: PlanningContext, view: DeviceView, alone: bool, final: float, tail: TailWork | None) -> _WholeTail:
    """The tail on the device if it has room for its weights and runs it, making what it
    lacks of them, sooner than the orchestrator gets the final map (``final`` bytes) and
    runs it there; ``alone`` (``local``: one device, the baseline), on the device whenever
    it has room. A tail without a fully connected layer (``tail`` None: the output is a map)
    runs where the answer is made, on the orchestrator."""
    everything = ctx.chain.tail_work if tail is None else (*tail.head, tail.first, *tail.rest)
    broker, speed = ctx.env.broker_link, view.bytes_per_s
    there = final / broker.bytes_per_s + ctx.env.orchestrator.work_seconds(everything) + final / speed
    if tail is None or not fits(view, tail.weight_bytes):
        return _WholeTail(False, final, there - final / speed)
    whole = Span(0, tail.features)
    run = view.profile.work_seconds(everything) + LOGITS_BYTES / speed
    made = making_seconds(view, tail, TailRows((whole,), rest=True))
    if alone or run + made <= there:
        return _WholeTail(True, float(LOGITS_BYTES), run + made - LOGITS_BYTES / speed)
    prepare = ((view.name, TailRows((whole,), True)),) if run <= there else ()
    return _WholeTail(False, final, there - final / speed, prepare)


def whole_model_seconds(ctx: PlanningContext, alone: bool = False) -> dict[str, float]:
    """Each device's time for a whole request on its own: the image in, every stage, the
    tail and the logits out, or the final map out and the tail on the orchestrator
    (:func:`_whole_tail`; ``alone``: as ``local`` runs it). What ``local`` and ``replicas``
    cost per request."""
    block = FusedBlock(0, len(ctx.chain.stages))
    a, b = np.array([0]), np.array([ctx.chain.shapes[-1].height])
    image = float(ctx.costs.input_bytes(block, a, b)[0])
    final = float(ctx.costs.output_bytes(block, a, b)[0])
    work = TailWork.of_split(ctx.chain.tail_work)
    broker, orchestrator = ctx.env.broker_link, ctx.env.orchestrator
    seconds = {}
    for shared in ctx.env.devices:
        view = _on_its_own(shared)
        tail = _whole_tail(ctx, view, alone, final, work)
        moved = np.array([image + tail.back + 2 * MESSAGE_OVERHEAD_BYTES])
        seconds[view.name] = (
            ctx.request_s
            + 2 * message_seconds(orchestrator)  # the image out, the result in
            + 2 * message_seconds(view.profile)
            + float(link_seconds(view, moved)[0])
            + image / broker.bytes_per_s
            + 2 * broker.latency_s
            + ctx.costs.whole_seconds(view.profile)
            + tail.seconds
        )
    return seconds


def whole_model_plan(
    ctx: PlanningContext, strategy: Strategy, device: str, seconds: float, blocks: Sequence[FusedBlock] = ()
) -> Plan:
    """The whole model on ``device``, the tail too where :func:`_whole_tail` puts it (for
    ``local``, one device alone, there whenever it has room): the image goes there, the
    logits (or the final map, for the orchestrator's tail) come back.

    ``blocks``: steps to run it in (consecutive, the whole chain; default one). Between
    steps the device turns to an older request whose step is ready (``flow`` serves whole
    requests beside split ones), so a whole request that came later holds it for one step
    at most, not for the whole model."""
    whole_chain = FusedBlock(0, len(ctx.chain.stages))
    cuts = list(blocks) or [whole_chain]
    final = float(ctx.costs.output_bytes(whole_chain, np.array([0]), np.array([ctx.chain.shapes[-1].height]))[0])
    tail = _whole_tail(
        ctx, _on_its_own(ctx.env.device(device)), strategy.alone, final, TailWork.of_split(ctx.chain.tail_work)
    )
    steps: list[BlockPlan] = []
    for cut in cuts:
        last = cut is cuts[-1]
        whole = [(device, Span(0, ctx.chain.shapes[cut.stop].height))]
        steps.append(flow_block(ctx.chain, cut, whole, steps[-1] if steps else None, gather=last and not tail.here))
    placed = TailPlan(device) if tail.here else TailPlan(prepare=tail.prepare)
    return ctx.plan(strategy, steps, seconds, tail=placed)


def _fastest_whole(ctx: PlanningContext, strategy: Strategy) -> Plan:
    seconds = whole_model_seconds(ctx, alone=strategy.alone)
    best = min(seconds, key=lambda d: (seconds[d], d))
    return whole_model_plan(ctx, strategy, best, seconds[best])


def plan_local(ctx: PlanningContext) -> Plan:
    """The whole model on the one device that ends it first, tail included (the baseline)."""
    return _fastest_whole(ctx, Strategy("local"))


def plan_replicas(ctx: PlanningContext) -> Plan:
    """Whole requests, each on one device: which one is chosen per request, by load, at run
    time (:func:`~edgeci_mqtt.planner.serving.choose_serving`); the plan names the fastest."""
    return _fastest_whole(ctx, Strategy("replicas"))


def layer_groups(stages: Sequence[Stage]) -> list[FusedBlock]:
    """One block per weight layer (conv or residual block) with the stages that follow it."""
    starts = [k for k, s in enumerate(stages) if s.weighted]
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [FusedBlock(a, b) for a, b in zip(starts, [*starts[1:], len(stages)], strict=True)]


def _proportional_runs(ctx: PlanningContext, block: FusedBlock) -> list[tuple[str, Span]]:
    return proportional_rows(ctx.chain.shapes[block.stop].height, ctx.estimator.speeds(block))


def _proportional_plan(ctx: PlanningContext, strategy: Strategy, blocks: Sequence[FusedBlock]) -> Plan:
    runs = [_proportional_runs(ctx, block) for block in blocks]
    total = sum(ctx.estimator.runs_seconds(block, r) for block, r in zip(blocks, runs, strict=True))
    strips = [_strips(ctx, block, r) for block, r in zip(blocks, runs, strict=True)]
    return ctx.plan(strategy, strips, total + ctx.request_s)


def plan_modnn(ctx: PlanningContext) -> Plan:
    return _proportional_plan(ctx, Strategy("modnn"), layer_groups(ctx.chain.stages))


def plan_aofl(ctx: PlanningContext) -> Plan:
    est = ctx.estimator

    def cost(i: int, j: int) -> float:
        block = FusedBlock(i, j)
        return est.runs_seconds(block, _proportional_runs(ctx, block))

    _, blocks = best_segmentation(len(ctx.chain.stages), cost)
    return _proportional_plan(ctx, Strategy("aofl"), blocks)


def darknet_layers(stages: Sequence[Stage]) -> list[int]:
    """Layers as darknet counts them after each stage: convolutions and pools (BN and
    activations fold into their convolution; a residual block counts its convolutions)."""
    counts, total = [], 0
    for stage in stages:
        total += stage.layers
        counts.append(total)
    return counts


def plan_deepthings(ctx: PlanningContext) -> Plan:
    stages, shapes = ctx.chain.stages, ctx.chain.shapes
    counts = darknet_layers(stages)
    depth = next((k + 1 for k, c in enumerate(counts) if c >= DEEPTHINGS_LAYERS), len(stages))
    # the fused block ends after the activation/pooling that follow its last layer
    while depth < len(stages) and not stages[depth].weighted:
        depth += 1
    fused = FusedBlock(0, depth)
    tasks = tuple(ctx.task(fused, region, "") for region in DEEPTHINGS_GRID.regions(shapes[depth]))
    blocks = [BlockPlan(fused, tasks, dispatch="pull")]
    if depth < len(stages):
        rest = FusedBlock(depth, len(stages))
        gateway = ctx.task(rest, TileRegion.whole(shapes[-1].height, shapes[-1].width), "")
        blocks.append(BlockPlan(rest, (gateway,), placement="orchestrator"))
    return ctx.plan(Strategy("deepthings"), blocks, 0.0)


def _bids(ctx: PlanningContext, block: FusedBlock, items: Sequence[Span], flow: bool = False) -> list[Bid]:
    """Every device's bid. Each device prices items itself; here, in one process,
    devices alike in profile, link and queue share one pricing."""
    priced: dict[tuple[object, ...], Bid] = {}
    bids = []
    for view in ctx.env.devices:
        key = (view.profile, view.link, view.queue_s)
        if key not in priced:
            priced[key] = make_bid(view, ctx.costs, block, items, flow)
        bid = priced[key]
        bids.append(Bid(view.name, bid.queue_s, bid.alone_s, bid.extend_s))
    return bids


def _dpfl(ctx: PlanningContext, est: BlockEstimator) -> tuple[float, list[FusedBlock]]:
    """DPFL over ``est``'s balanced block costs."""
    return best_segmentation(len(ctx.chain.stages), lambda i, j: float(est.seconds_to(j)[i]))


def plan_edgeci(ctx: PlanningContext) -> Plan:
    predicted, blocks = _dpfl(ctx, ctx.estimator)
    plans = []
    for block in blocks:
        items = auction_items(ctx.chain.shapes[block.stop])
        won = award(_bids(ctx, block, items), len(items))
        plans.append(BlockPlan(block, award_tasks(ctx.chain.stages, ctx.chain.shapes, block, items, won)))
    return ctx.plan(Strategy("edgeci"), plans, predicted + ctx.request_s, auctioned=True)


def plan_flow(ctx: PlanningContext, strategy: Strategy) -> Plan:
    """``strategy``: ``flow`` as asked for, with its ablation options."""
    options = strategy.options
    predicted, blocks = _dpfl(ctx, ctx.flow_estimator)
    lots = []
    for block in blocks:
        items = auction_items(ctx.chain.shapes[block.stop])
        lots.append((block, items, _bids(ctx, block, items, flow=True)))
    plans, _, tail, tail_s = flow_blocks(ctx.chain, ctx.costs, ctx.env, lots, strategy.places_tail)
    # the tail counts: a split is weighed against one device running everything, tail included
    plan = ctx.plan(strategy, plans, predicted + tail_s + ctx.request_s, True, tail, options.barrier, options.compress)
    if (options.overlap or options.bands) and not options.barrier:  # behind a barrier every halo is there first
        return with_overlap(plan, ctx.chain, ctx.costs, ctx.env, options.overlap, options.bands)
    return plan


_PLANNERS: dict[StrategyName, Callable[[PlanningContext], Plan]] = {
    "local": plan_local,
    "replicas": plan_replicas,
    "modnn": plan_modnn,
    "deepthings": plan_deepthings,
    "aofl": plan_aofl,
    "edgeci": plan_edgeci,
}


def make_plan(strategy: Strategy, ctx: PlanningContext) -> Plan:
    """The plan of ``strategy`` (``flow`` with its options, for the ablation)."""
    if strategy.name == "flow":  # the one planner that takes options
        return plan_flow(ctx, strategy)
    return _PLANNERS[strategy.name](ctx)
