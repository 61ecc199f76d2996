"""Task graphs that keep rows on the devices (strategy ``flow``, docs/RUNTIME.md).

Each block's output rows are auctioned as full-width strips, as in ``edgeci``, but a
strip's output stays on the device that computed it. A task of the next block then
reads its input from whoever holds each part of it: its own rows from itself, the halo
(or rows the partition moved) from the devices that computed them. Only the first
block reads from the orchestrator (the image) and only the last block's tiles go back
to it (for the tail).

How partitions stay consistent from block to block: a device's bid prices its whole
input as arriving over its own link, and the auctioneer takes off the rows it already
holds (:func:`held_rows`), so keeping its band of the map is cheaper than
taking another's. The award also tries the previous block's top-to-bottom device order
first. A band's edges still move where the devices' relative speeds differ between
blocks (a pooling block and a convolution block do not favour the same devices
equally); then only the rows that changed hands move, from the device that holds them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.chain import ChainSpec
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.planner.awas import Award, Bid, HeldRows, award
from edgeci_mqtt.planner.costs import RowModel, input_region, make_task
from edgeci_mqtt.planner.environment import Environment
from edgeci_mqtt.planner.plan import BlockPlan, TaskInput
from edgeci_mqtt.planner.tail import TailPlan, TailWork, place_tail, tail_to_prepare
from edgeci_mqtt.timeline import ORCHESTRATOR

__all__ = ["flow_block", "flow_blocks", "held_rows", "holdings"]


def holdings(previous: BlockPlan | None) -> dict[str, Span]:
    """Rows of the next block's input map each device holds after ``previous`` (one band each)."""
    if previous is None:
        return {}
    return {t.output: t.out_region.rows for t in previous.tasks if t.output != ORCHESTRATOR}


def held_rows(
    costs: RowModel, env: Environment, block: FusedBlock, items: Sequence[Span], held: Mapping[str, Span]
) -> HeldRows:
    """Where ``block``'s input rows are (``held``, by device) and what one row takes over each
    device's link (:class:`~edgeci_mqtt.planner.awas.HeldRows`)."""
    row_bytes = costs.row_bytes(block.start)
    per_row = {view.name: row_bytes / view.bytes_per_s for view in env.devices}
    reach = [costs.input_rows(block, item.start, item.stop) for item in items]
    lo, hi = tuple(r[0] for r in reach), (0, *(r[1] for r in reach))
    bands = {d: (band.start, band.stop, per_row[d]) for d, band in held.items() if d in per_row}
    return HeldRows(lo, hi, bands, per_row)


def flow_block(
    chain: ChainSpec,
    block: FusedBlock,
    runs: Sequence[tuple[str, Span]],
    previous: BlockPlan | None,
    gather: bool | None = None,
) -> BlockPlan:
    """The tasks of ``block`` when device ``d`` computes rows ``span`` for each run.

    Each task's input is cut into pieces by who holds them after ``previous`` (the
    orchestrator before the first block); its output stays on its device, or with
    ``gather`` goes to the orchestrator (default: for the chain's last block).
    """
    width = chain.shapes[block.stop].width
    last = block.stop == len(chain.stages) if gather is None else gather
    tasks = []
    for device, span in runs:
        out_region = TileRegion(span, Span(0, width))
        pieces: tuple[TaskInput, ...] | None = None
        if previous is not None:
            need = input_region(chain.stages, chain.shapes, block, out_region)
            pieces = tuple(
                TaskInput(block.start, part, t.output)
                for t in previous.tasks
                if (part := t.out_region.intersection(need)) is not None
            )
        output = ORCHESTRATOR if last else device
        tasks.append(make_task(chain.stages, chain.shapes, block, out_region, device, pieces, output))
    return BlockPlan(block, tuple(tasks))


def flow_blocks(
    chain: ChainSpec,
    costs: RowModel,
    env: Environment,
    lots: Sequence[tuple[FusedBlock, Sequence[Span], Sequence[Bid]]],
    place: bool = True,
    keep: TailPlan | None = None,
) -> tuple[list[BlockPlan], list[Award], TailPlan, float]:
    """Award every block's items in order, each knowing who holds what after the one
    before (see the module docstring), build their tasks, and place the tail where the
    final map's tiles are cheapest to use (:func:`~edgeci_mqtt.planner.tail.place_tail`;
    ``keep``: the placement in use, kept unless another is clearly cheaper; with the rows
    devices are to make when idle for a cheaper one); the last
    block's tiles go to the orchestrator only if the tail runs there (always without
    ``place``). Last: the tail's estimated seconds from the final map (0 without ``place``)."""
    plans: list[BlockPlan] = []
    awards = []
    runs: list[tuple[str, Span]] = []
    for block, items, bids in lots:
        previous = plans[-1] if plans else None
        held = holdings(previous)
        first = [t.device for t in previous.tasks] if previous else []
        won = award(bids, len(items), held_rows(costs, env, block, items, held), first)
        runs = [(d, Span(items[s.start].start, items[s.stop - 1].stop)) for d, s in won.runs]
        plans.append(flow_block(chain, block, runs, previous, gather=False))
        awards.append(won)
    final = {t.device: t.out_bytes for t in plans[-1].tasks}
    tail, tail_s = TailPlan(), 0.0
    work = TailWork.of_split(chain.tail_work) if place else None
    if work is not None:
        map_bytes = sum(final.values())
        tail, tail_s = place_tail(env, work, map_bytes, final, orchestrator_holds=False, keep=keep)
        prepare = tail_to_prepare(env, work, map_bytes, final, False, tail, keep)
        tail = replace(tail, prepare=prepare) if prepare else tail
    if tail.on_orchestrator:
        plans[-1] = flow_block(chain, plans[-1].block, runs, plans[-2] if len(plans) > 1 else None, gather=True)
    return plans, awards, tail, tail_s
