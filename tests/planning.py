"""Helpers for planner tests: deterministic profiles and environments (no measuring)."""

from __future__ import annotations

from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import MADE_KIND, DeviceProfile
from edgeci_mqtt.planner.environment import DeviceView, Environment

GFLOPS = 1e9


def flat_profile(gflops: float = 100.0, overhead_s: float = 1e-5, made: float | None = None) -> DeviceProfile:
    """A device that runs every convolution at ``gflops`` and moves memory at 20 GB/s
    (``made``: bytes/s at which it makes tail weights; None: making is not priced)."""
    depths, sides = (27, 4608), (7, 224)
    return DeviceProfile(
        conv_depths=depths,
        conv_sides=sides,
        conv_rates=tuple(tuple(gflops * GFLOPS for _ in sides) for _ in depths),
        rates={"bn": 20e9, "relu": 20e9, "add": 20e9, "fc": 20e9} | ({MADE_KIND: made} if made else {}),
        pool_rates={"maxpool": ((4, 1e9), (9, 1e9)), "avgpool": ((4, 1e9), (9, 1e9))},
        op_overhead_s=overhead_s,
    )


def device(name: str, gflops: float = 100.0, mbit: float = 1000.0, latency_ms: float = 0.0) -> DeviceView:
    return DeviceView(name, flat_profile(gflops), Link(mbit, latency_ms))


def environment(*devices: DeviceView, broker_mbit: float = 10_000.0, orchestrator_gflops: float = 100.0) -> Environment:
    return Environment(tuple(devices), flat_profile(orchestrator_gflops), Link(broker_mbit, 0.0))
