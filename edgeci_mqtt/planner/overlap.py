"""Halo and compute overlapped: a ``flow`` step's rows that need no halo run first (pure).

Under ``flow`` a device holds its band of each map. The next block's rows whose input lies
wholly inside that band need nothing from anyone, so they can be computed as soon as the
device's own previous step is done, while the halo from its neighbours is still in flight;
only the rows at its band's edges wait for the halo. :func:`overlapped` cuts each such task
into its *interior* (first) and the *edges* above and below it, each a task of its own
reading exactly its input; every task of the next block then reads its pieces from these
(a piece per producing task, as always). A device runs its program's steps in order, so it
starts the interior at once and each edge when its halo is there.

The image is the first block's input, and it comes from the orchestrator: its program
carries the piece of a device's first step, the rest follows as rows once every program is
out. So the first block's tasks are cut in two *bands*, the upper first: a device starts
on its upper band as soon as its program is there, while the image's lower bands travel.

Exact by construction: every task computes its output rows from their whole input region
(fused-tile semantics), however the rows are cut. The price is the rows the cut tasks
compute twice inside the block (each edge recomputes the intermediate rows it shares with
the interior), which the simulator weighs against the waiting it saves
(:mod:`edgeci_mqtt.sim.choice` keeps the overlapped plan only where it replays faster).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.chain import ChainSpec
from edgeci_mqtt.core.geometry import Span
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.planner.costs import RowModel
from edgeci_mqtt.planner.environment import Environment
from edgeci_mqtt.planner.flow import flow_block
from edgeci_mqtt.planner.plan import BlockPlan, Plan, Task
from edgeci_mqtt.timeline import ORCHESTRATOR

__all__ = ["interior", "overlapped", "with_overlap"]


def interior(costs: RowModel, block_plan: BlockPlan, task: Task, own: Span) -> Span | None:
    """The longest run of ``task``'s output rows whose input lies within ``own`` (rows of the
    block's input the device holds itself), or None when there is none or it is the whole task."""
    rows, block = task.out_region.rows, block_plan.block
    start = next((r for r in range(rows.start, rows.stop) if costs.input_rows(block, r, r + 1)[0] >= own.start), None)
    stop = next((r for r in range(rows.stop, rows.start, -1) if costs.input_rows(block, r - 1, r)[1] <= own.stop), None)
    if start is None or stop is None or stop <= start or costs.input_rows(block, start, stop)[0] < own.start:
        return None
    inner = Span(start, stop)
    return None if inner == rows else inner


REDUNDANT = 0.10
"""A task is cut only if that adds at most this share to its compute: at 224x224, fused
blocks reach far, interiors are thin, and a cut that costs more than that rarely saves as
much waiting (simulated over random clusters, docs/PLANNER.md)."""


def _redundant(costs: RowModel, profile: DeviceProfile, block: FusedBlock, rows: Span, inner: Span) -> float:
    """The seconds that cutting a task at ``inner`` adds to its compute on its device."""
    parts = [s for s in (Span(rows.start, inner.start), inner, Span(inner.stop, rows.stop)) if s.size]
    a, b = np.array([s.start for s in parts]), np.array([s.stop for s in parts])
    whole = costs.compute_seconds(profile, block, np.array([rows.start]), np.array([rows.stop]))[0]
    return float(costs.compute_seconds(profile, block, a, b).sum() - whole)


def _pays(costs: RowModel, env: Environment, block_plan: BlockPlan, task: Task, inner: Span) -> bool:
    """Whether cutting ``task`` at ``inner`` adds at most :data:`REDUNDANT` to its compute.
    Whether the cut then saves more waiting than that is the replay's to judge: for the
    image, it turns on the queue of programs on the orchestrator's link as much as on the
    device's own (docs/PLANNER.md, halo and compute overlapped)."""
    block, rows, profile = block_plan.block, task.out_region.rows, env.device(task.device).profile
    whole = costs.compute_seconds(profile, block, np.array([rows.start]), np.array([rows.stop]))[0]
    return _redundant(costs, profile, block, rows, inner) <= REDUNDANT * whole


def _own_rows(previous: BlockPlan, device: str) -> Span | None:
    """The one band of the previous block's output ``device`` keeps (None: none, or not one band)."""
    kept = sorted((t.out_region.rows for t in previous.tasks if t.output == device), key=lambda s: s.start)
    if not kept or any(a.stop != b.start for a, b in itertools.pairwise(kept)):
        return None
    return Span(kept[0].start, kept[-1].stop)


def _inner(
    costs: RowModel, block_plan: BlockPlan, task: Task, previous: BlockPlan | None, halo: bool, bands: bool
) -> Span | None:
    """The rows of ``task`` to run first (None: it is not cut): the upper band of a first
    block's task (``bands``), the interior of one that reads other devices' rows (``halo``)."""
    if previous is None:
        rows = task.out_region.rows
        return Span(rows.start, rows.start + rows.size // 2) if bands and rows.size > 1 else None
    own = _own_rows(previous, task.device)
    reads_others = any(p.source not in (task.device, ORCHESTRATOR) for p in task.inputs)
    return interior(costs, block_plan, task, own) if halo and own is not None and reads_others else None


def overlapped(
    chain: ChainSpec,
    costs: RowModel,
    env: Environment,
    blocks: Sequence[BlockPlan],
    halo: bool = True,
    bands: bool = True,
    force: bool = False,
) -> list[BlockPlan]:
    """``blocks`` (a ``flow`` plan's, full-width strips) with every task that reads rows of
    other devices cut into its interior, then its edges above and below (``halo``), and the
    first block's tasks cut into an upper and a lower band (``bands``; see the module
    docstring). Tasks with nothing to cut stay whole, and so do tasks whose cut does not pay
    for the rows it computes twice (unless ``force``: every cut, to test it). The same rows,
    on the same devices, to the same places."""
    out: list[BlockPlan] = []
    for block_plan in blocks:
        previous = out[-1] if out else None
        if block_plan.placement != "devices" or block_plan.dispatch != "static":
            out.append(block_plan)
            continue
        runs: list[tuple[str, Span]] = []
        for task in block_plan.tasks:
            inner = _inner(costs, block_plan, task, previous, halo, bands)
            rows = task.out_region.rows
            if inner is None or not (force or _pays(costs, env, block_plan, task, inner)):
                runs.append((task.device, rows))
                continue
            runs.append((task.device, inner))
            runs += [(task.device, s) for s in (Span(rows.start, inner.start), Span(inner.stop, rows.stop)) if s.size]
        rebuilt = flow_block(chain, block_plan.block, runs, previous, gather=block_plan.gathers)
        out.append(replace(block_plan, tasks=rebuilt.tasks))  # reading its pieces from ``previous`` as cut itself
    return out


def with_overlap(plan: Plan, chain: ChainSpec, costs: RowModel, env: Environment, halo: bool, bands: bool) -> Plan:
    """``plan`` (``flow``'s, sequential) with its blocks cut by :func:`overlapped`, marked so the
    run-time award cuts its own blocks the same way."""
    blocks = overlapped(chain, costs, env, plan.blocks, halo=halo, bands=bands)
    return replace(plan, blocks=tuple(blocks), overlap=halo, bands=bands)
