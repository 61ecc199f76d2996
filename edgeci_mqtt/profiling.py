"""Measuring a device profile: real convolutions, pools and elementwise ops, timed with torch.

Apart from :mod:`edgeci_mqtt.core.profile` (the profile as data, and how it prices
work) because measuring needs torch and the planner must not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.core.kernels import ReLUKernel
from edgeci_mqtt.core.profile import MADE_KIND, DeviceProfile
from edgeci_mqtt.core.work import LINEAR_CHUNK_ROWS
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.models.weights import fill_linear_rows

__all__ = ["map_densities", "measure_profile"]

# Convolution probes as (in channels, out channels, kernel): reduction depths from a
# 3-channel stem through a 1x1 downsample to 512-channel 3x3 layers, each run at
# several output sides, because small tiles run markedly slower per FLOP.
_CONV_PROBES: tuple[tuple[int, int, int], ...] = (
    (3, 64, 3), (256, 512, 1), (64, 64, 3), (128, 128, 3), (256, 256, 3), (512, 512, 3),
)  # fmt: skip
_CONV_SIDES: tuple[int, ...] = (2, 4, 7, 14, 28, 56, 112, 224)
_PROBE_SECONDS = 0.015  # largest single probe run; bigger probes reuse the next smaller side
_SUSTAINED_S = 0.6  # wall time of the sustained run: several CFS periods, so quotas show


def _best_time(fn: Callable[[], object], runs: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
    """Fastest of ``runs`` runs after a warm-up: the op's own speed, noise removed."""
    fn()
    best = math.inf
    for _ in range(runs):
        started = clock()
        fn()
        best = min(best, clock() - started)
    return best


def _probe_clock(threads: int) -> Callable[[], float]:
    """The clock the shape probes are timed with.

    Under a CPU quota a short probe's wall time depends on where it falls in the
    scheduler period (it runs at full speed, or waits out the rest of the period),
    so wall-clock probes give a jagged, meaningless shape. With one torch thread the
    op runs on this thread, whose CPU time counts only the time it actually ran: the
    shape comes out as at full speed and the sustained run, in wall time, scales it.
    With more threads the work runs on torch's pool, so wall time is all we have.
    """
    return time.thread_time if threads == 1 else time.perf_counter


def _conv_flops(cin: int, cout: int, k: int, side: int) -> int:
    return 2 * cin * k * k * cout * side * side


def _conv_probe(cin: int, cout: int, k: int, side: int, gen: torch.Generator) -> tuple[Callable[[], object], int]:
    x = torch.randn(1, cin, side + k - 1, side + k - 1, generator=gen)
    w = torch.randn(cout, cin, k, k, generator=gen)
    return (lambda: F.conv2d(x, w)), _conv_flops(cin, cout, k, side)


def measure_profile(threads: int = 1) -> DeviceProfile:
    """Micro-benchmark this machine with ``threads`` torch threads in about 2 seconds.

    Two parts. The *shape* of the device's speed (convolutions by depth and tile
    size, elementwise ops, pooling, per-op overhead) comes from short best-of-3
    probes; a probe that would take this device over 15 ms is skipped and takes the
    rate of the next smaller size. Then one sustained run of about 0.6 s wall
    time measures what the device really delivers over several scheduler periods
    (a CPU quota or thermal throttling shows there, not in short bursts), and the
    whole profile is scaled to match it.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return _sustained(_measure_shape(threads))
    finally:
        torch.set_num_threads(previous)


def _measure_shape(threads: int) -> DeviceProfile:
    clock = _probe_clock(threads)

    def best(fn: Callable[[], object], runs: int = 3) -> float:
        return _best_time(fn, runs, clock)

    gen = torch.Generator().manual_seed(0)
    fn, flops = _conv_probe(64, 64, 3, 14, gen)
    largest = flops / best(fn, 2) * _PROBE_SECONDS  # FLOPs of the largest probe run
    depths, rows = [], []
    for cin, cout, k in sorted(_CONV_PROBES, key=lambda p: p[0] * p[2] * p[2]):
        row: list[float] = []
        for side in _CONV_SIDES:
            if row and _conv_flops(cin, cout, k, side) > largest:  # skipped before its tensors are made
                row.append(row[-1])  # (512 channels at 224 px would take 100 MB)
                continue
            fn, flops = _conv_probe(cin, cout, k, side, gen)
            row.append(flops / best(fn))
        depths.append(cin * k * k)
        rows.append(tuple(row))
    x = torch.randn(1, 64, 112, 112, generator=gen)
    nbytes = x.numel() * 4
    mean, var = torch.zeros(64), torch.ones(64)
    elementwise: dict[str, tuple[Callable[[], object], float]] = {
        "bn": (lambda: F.batch_norm(x, mean, var, None, None, False, 0.0, 1e-5), 2 * nbytes),
        "relu": (lambda: torch.relu(x), 2 * nbytes),
        "add": (lambda: torch.relu(x + x), 3 * nbytes),
    }
    vec, weights = torch.randn(1, 4096, generator=gen), torch.randn(4096, 4096, generator=gen)
    elementwise["fc"] = (lambda: F.linear(vec, weights), weights.numel() * 4)
    chunk = (LINEAR_CHUNK_ROWS, 4096)  # tail rows as a device makes them: fresh memory, seeded (the default)
    elementwise[MADE_KIND] = (lambda: fill_linear_rows(torch.empty(chunk), 0, "probe", 0), math.prod(chunk) * 4)
    rates = {kind: moved / best(fn) for kind, (fn, moved) in elementwise.items()}
    quarter = x.numel() // 4  # outputs of a stride-2 pool
    pool_rates = {  # VGG's 2x2/2 and ResNet's 3x3/2 windows
        "maxpool": (
            (4, 4 * quarter / best(lambda: F.max_pool2d(x, 2, 2))),
            (9, 9 * quarter / best(lambda: F.max_pool2d(x, 3, 2, 1))),
        ),
        "avgpool": (
            (4, 4 * quarter / best(lambda: F.avg_pool2d(x, 2, 2))),
            (9, 9 * quarter / best(lambda: F.avg_pool2d(x, 3, 2, 1))),
        ),
    }
    relu, tiny = ReLUKernel("probe"), torch.zeros(1, 1, 1, 1)
    region, shape = TileRegion.of(0, 1, 0, 1), FeatureShape(1, 1, 1)
    overhead = best(lambda: relu.run(tiny, region, region, shape), 20)
    return DeviceProfile(tuple(depths), _CONV_SIDES, tuple(rows), rates, pool_rates, overhead, threads)


def _sustained(shape: DeviceProfile) -> DeviceProfile:
    gen = torch.Generator().manual_seed(1)
    fn, flops = _conv_probe(128, 128, 3, 28, gen)
    fn()
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < _SUSTAINED_S or runs < 3:
        fn()
        runs += 1
    sustained_rate = runs * flops / elapsed
    factor = sustained_rate / shape.conv_rate(128 * 9, 28 * 28)
    return shape.scaled(factor) if factor < 0.9 else shape


def map_densities(chain: StageChain, x: Tensor) -> tuple[float, ...]:
    """Share of non-zero values in the map at every stage boundary for input ``x``: what
    compressing maps on the wire saves there (see :mod:`edgeci_mqtt.wire.compression`).
    Bit patterns count, as the codec counts them (``-0.0`` is a value)."""
    shapes = chain.shapes(int(x.shape[2]), int(x.shape[3]))
    densities = [_nonzero_share(x)]
    with torch.inference_mode():
        for k in range(len(chain.kernels)):
            whole_in = TileRegion.whole(shapes[k].height, shapes[k].width)
            whole_out = TileRegion.whole(shapes[k + 1].height, shapes[k + 1].width)
            x = run_block_tile(chain.kernels, shapes, FusedBlock(k, k + 1), x, whole_in, whole_out)
            densities.append(_nonzero_share(x))
    return tuple(densities)


def _nonzero_share(x: Tensor) -> float:
    return float(torch.count_nonzero(x.contiguous().view(torch.int32))) / x.numel()
