"""A device corrects its announced speed by the work it really did.

The pure estimate first (it learns the ratio, waits for enough work, ignores noise
below its threshold and nonsense numbers); then a device agent over the in-memory bus
whose boot profile is far too fast: after a few requests the orchestrator's table
holds a slower profile, and answers stay exact.
"""

from __future__ import annotations

import math
import time

import pytest

from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.planner.calibration import MAX_FACTOR, SpeedCalibration
from tests.exactness import References, assert_float32_faithful
from tests.inprocess import memory_cluster
from tests.planning import flat_profile

pytestmark = pytest.mark.pure


def test_learns_the_ratio_and_announces_it_once_warm() -> None:
    calibration = SpeedCalibration(half_life_s=1.0, warmup_s=0.5, threshold=0.05)
    announced = [calibration.observe(0.05, 0.1) for _ in range(4)]  # 0.4 s of work: still warming up
    assert announced == [None] * 4
    factors = [f for f in (calibration.observe(0.05, 0.1) for _ in range(200)) if f is not None]
    assert factors, "never announced"
    assert calibration.announced == factors[-1]
    assert abs(calibration.factor - 2.0) < 0.01  # 20 s of work at twice the predicted time
    assert abs(factors[-1] / 2.0 - 1.0) <= 0.05 + 1e-9  # within the threshold of the truth


def test_small_drift_is_not_announced_again() -> None:
    calibration = SpeedCalibration(warmup_s=0.0, threshold=0.05)
    first = calibration.observe(1.0, 2.0)
    assert first is not None
    for _ in range(50):  # ±3 % around what was announced
        assert calibration.observe(1.0, first * 1.03) is None
        assert calibration.observe(1.0, first * 0.97) is None


def test_faster_than_profiled_is_learned_too() -> None:
    calibration = SpeedCalibration(half_life_s=1.0, warmup_s=0.0, threshold=0.05)
    for _ in range(100):
        calibration.observe(0.2, 0.1)
    assert abs(calibration.announced - 0.5) <= 0.05 * 0.5 + 1e-9


@pytest.mark.parametrize(
    ("predicted", "measured"),
    [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (math.inf, 1.0), (1.0, math.inf), (math.nan, 1.0), (1.0, math.nan)],
)
def test_nonsense_times_are_ignored(predicted: float, measured: float) -> None:
    calibration = SpeedCalibration(warmup_s=0.0)
    assert calibration.observe(predicted, measured) is None
    assert calibration.factor == 1.0


def test_a_stall_moves_the_estimate_at_most_max_factor() -> None:
    calibration = SpeedCalibration(warmup_s=0.0, half_life_s=1e-9)  # the last observation is all that counts
    assert calibration.observe(1e-3, 60.0) == pytest.approx(MAX_FACTOR)
    assert calibration.observe(60.0, 1e-3) is not None
    assert calibration.factor == pytest.approx(1 / MAX_FACTOR)


def test_a_device_announces_the_speed_its_work_shows(references: References) -> None:
    """Boot profile 100x too fast (10 TFLOP/s): the device learns it is slower and says so."""
    store = ModelStore({"resnet34": None}, seed=0)
    boot = flat_profile(gflops=10_000.0)
    with memory_cluster(store, devices=0, strategy="local") as running:
        agent = running.add_device("dev-fast", boot, calibrate=True)
        running.wait_for_table({"dev-fast"})
        generation = running.orchestrator.table.generation
        ref = references["resnet34", 64, 64]
        with running.client() as client:
            # a few seconds of work before the estimate has moved (20-40 ms a request, by host)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                answer = client.infer(ref.x, "resnet34", "local", timeout=60)
                assert_float32_faithful(answer.logits, ref.logits32, ref.logits64, "calibrating")
                assert agent.bidder.calibration is not None
                if agent.bidder.calibration.announced > 1.5:
                    break
        assert agent.bidder.calibration.announced > 1.5
        announced = running.orchestrator.table.views("resnet34", store.digests["resnet34"])[0].profile
        assert announced.conv_rates[0][0] < boot.conv_rates[0][0] / 1.5
        assert running.orchestrator.table.generation == generation  # bids carry the speed: no new plan
