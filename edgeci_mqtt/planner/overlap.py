"""Halo and compute overlapped: a ``flow`` step's rows that need no halo run first (pure).

Under ``flow`` a device holds its band of each map. The next block's rows whose input lies
wholly inside that band need nothing from anyone, so they can be computed as soon as the
device's own previous step is done, while the halo from its neighbours is still in flight;
only the rows at its band's edges wait for the halo. :func:`overlapped` cuts each such task
into its *interior* (first) and the *edges* above and below it, each a task of its own
reading exactly its input; every task of the next block then reads its pieces from these
(a piece per producing task, as always). A device runs its program's steps in order, so it
starts the interior at once and each edge when its halo is there.

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
    """The share of a task's compute that cutting it at ``inner`` adds on its device."""
    parts = [s for s in (Span(rows.start, inner.start), inner, Span(inner.stop, rows.stop)) if s.size]
    a, b = np.array([s.start for s in parts]), np.array([s.stop for s in parts])
    whole = costs.compute_seconds(profile, block, np.array([rows.start]), np.array([rows.stop]))[0]
    return float(costs.compute_seconds(profile, block, a, b).sum() / whole - 1)


def _own_rows(previous: BlockPlan, device: str) -> Span | None:
    """The one band of the previous block's output ``device`` keeps (None: none, or not one band)."""
    kept = sorted((t.out_region.rows for t in previous.tasks if t.output == device), key=lambda s: s.start)
    if not kept or any(a.stop != b.start for a, b in itertools.pairwise(kept)):
        return None
    return Span(kept[0].start, kept[-1].stop)


def overlapped(
    chain: ChainSpec, costs: RowModel, env: Environment, blocks: Sequence[BlockPlan], redundant: float = REDUNDANT
) -> list[BlockPlan]:
    """``blocks`` (a ``flow`` plan's, full-width strips) with every task that reads rows of
    other devices cut into its interior, then its edges above and below (see the module
    docstring); the first block (it reads the image from the orchestrator) and tasks with
    no interior stay whole, and so do tasks whose cut would add more than ``redundant`` of
    their compute. The same rows, on the same devices, to the same places."""
    out: list[BlockPlan] = []
    for block_plan in blocks:
        previous = out[-1] if out else None
        if previous is None or block_plan.placement != "devices" or block_plan.dispatch != "static":
            out.append(block_plan)
            continue
        runs: list[tuple[str, Span]] = []
        for task in block_plan.tasks:
            own = _own_rows(previous, task.device)
            reads_others = any(p.source not in (task.device, ORCHESTRATOR) for p in task.inputs)
            inner = interior(costs, block_plan, task, own) if own is not None and reads_others else None
            rows = task.out_region.rows
            profile = env.device(task.device).profile
            if inner is None or _redundant(costs, profile, block_plan.block, rows, inner) > redundant:
                runs.append((task.device, rows))
                continue
            runs.append((task.device, inner))
            runs += [(task.device, s) for s in (Span(rows.start, inner.start), Span(inner.stop, rows.stop)) if s.size]
        out.append(_rebuilt(chain, block_plan, previous, runs))
    return out


def _rebuilt(chain: ChainSpec, block_plan: BlockPlan, previous: BlockPlan, runs: list[tuple[str, Span]]) -> BlockPlan:
    """``block_plan`` as ``runs``, reading their pieces from ``previous`` (as cut itself)."""
    rebuilt = flow_block(chain, block_plan.block, runs, previous, gather=block_plan.gathers)
    return replace(block_plan, tasks=rebuilt.tasks)


def with_overlap(plan: Plan, chain: ChainSpec, costs: RowModel, env: Environment) -> Plan:
    """``plan`` (``flow``'s, sequential) with its blocks cut by :func:`overlapped`, marked so the
    run-time award cuts its own blocks the same way."""
    return replace(plan, blocks=tuple(overlapped(chain, costs, env, plan.blocks)), overlap=True)
