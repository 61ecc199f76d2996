"""Seeded random clusters: devices drawn from the range of real edge boards.

Plans tuned on three reference clusters may not hold on the clusters people have, so the
benchmarks also run on clusters nobody tuned for. Every draw is independent (the fastest
CPU is as likely behind the worst link as behind the best) and log-uniform, since boards
span orders of magnitude: compute from a Pi Zero to a small NUC's share, links from a weak
Wi-Fi or cellular uplink to gigabit Ethernet. One seed and device count always give the
same cluster, on any machine and Python version (``random.Random`` seeded with a string).
The ranges and the reasons for them: docs/EMULATION.md.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from edgeci_mqtt.core.link import Link, Medium
from edgeci_mqtt.errors import ClusterError
from edgeci_mqtt.planner.cluster import ClusterSpec, DeviceSpec

__all__ = ["RANGES", "Ranges", "random_cluster"]

MEDIUM_NAME = "wifi"


@dataclass(frozen=True)
class Ranges:
    """Inclusive ranges the draws come from (log-uniform)."""

    cpu: tuple[float, float] = (0.02, 0.6)
    bandwidth_mbit: tuple[float, float] = (2.0, 500.0)
    latency_ms: tuple[float, float] = (0.3, 40.0)
    medium_mbit: tuple[float, float] = (10.0, 100.0)


RANGES = Ranges()
BROKER = DeviceSpec("broker", 0.25, Link(1000.0, 0.2))
"""The broker host of every random cluster: the reference clusters' hub (a small board on
gigabit Ethernet), so the devices are what varies."""
DRAWS = 10_000
"""Draws tried for a cluster within the CPU budget before giving up."""


def _log_uniform(rng: random.Random, low: float, high: float, digits: int) -> float:
    """A log-uniform draw rounded to ``digits`` significant digits, kept in ``[low, high]``."""
    value = math.exp(rng.uniform(math.log(low), math.log(high)))
    rounded = float(f"{value:.{digits}g}")
    return min(max(rounded, low), high)


def random_cluster(
    seed: int,
    devices: int,
    *,
    shared_medium: bool = False,
    cpu_budget: float | None = 1.0,
    ranges: Ranges = RANGES,
) -> ClusterSpec:
    """Cluster ``random-<seed>-<devices>``: ``devices`` devices drawn from ``ranges``.

    ``cpu_budget``: the most their CPU shares may add up to (clusters over it are drawn
    again), so the emulated cluster fits the host beside the broker (the reference clusters
    hold 1.0 of a core); None: no budget, and the cluster is for simulation only.
    ``shared_medium``: two to four of the devices (at least two) sit behind one Wi-Fi-like
    medium with its own bandwidth."""
    if devices < 1 or (shared_medium and devices < 2):
        raise ClusterError(f"a random cluster needs at least {2 if shared_medium else 1} devices, got {devices}")
    if cpu_budget is not None and cpu_budget < devices * ranges.cpu[0]:
        raise ClusterError(f"{devices} devices of at least {ranges.cpu[0]} CPU do not fit a budget of {cpu_budget}")
    rng = random.Random(f"edgeci-random-cluster/{seed}/{devices}/{shared_medium}")
    for _ in range(DRAWS):
        cpus = [_log_uniform(rng, *ranges.cpu, 2) for _ in range(devices)]
        if cpu_budget is None or sum(cpus) <= cpu_budget + 1e-9:
            break
    else:
        raise ClusterError(f"no draw of {devices} devices fit a CPU budget of {cpu_budget} in {DRAWS} tries")
    links = [
        (_log_uniform(rng, *ranges.bandwidth_mbit, 2), _log_uniform(rng, *ranges.latency_ms, 2)) for _ in range(devices)
    ]
    behind: set[int] = set()
    medium = None
    if shared_medium:
        medium = Medium(MEDIUM_NAME, _log_uniform(rng, *ranges.medium_mbit, 2))
        behind = set(rng.sample(range(devices), rng.randint(2, min(4, devices))))
    specs = tuple(
        DeviceSpec(f"dev-{i}", cpu, Link(mbit, ms, medium if i in behind else None))
        for i, (cpu, (mbit, ms)) in enumerate(zip(cpus, links, strict=True))
    )
    name = f"random-{seed}-{devices}" + ("-shared" if shared_medium else "")
    return ClusterSpec(name, BROKER, specs, emulate=cpu_budget is not None)
