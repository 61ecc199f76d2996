"""The planner, the simulator, timelines and the wire run without torch: nothing they import pulls it in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parent.parent
TORCH_FREE = (
    "edgeci_mqtt.planner.strategies",
    "edgeci_mqtt.planner.strategy",
    "edgeci_mqtt.planner.serving",
    "edgeci_mqtt.planner.dpfl",
    "edgeci_mqtt.sim.simulator",
    "edgeci_mqtt.timeline",
    "edgeci_mqtt.wire",
    "edgeci_mqtt.wire.access",
    "edgeci_mqtt.orchestrator.actions",
    "edgeci_mqtt.orchestrator.attempt",
    "edgeci_mqtt.orchestrator.programs",
    "edgeci_mqtt.graph.onnx_reader",
    "edgeci_mqtt.graph.stage",
    "edgeci_mqtt.graph.cuts",
)


def test_planner_simulator_timeline_and_wire_import_neither_torch_nor_the_models() -> None:
    """In a fresh interpreter (this one imported torch long ago), on this checkout's code."""
    probe = (
        f"import sys, {', '.join(TORCH_FREE)}\n"
        "print(sys.modules['edgeci_mqtt'].__file__)\n"
        "print(*sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('edgeci_mqtt.models')))\n"
    )
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    package, loaded = done.stdout.splitlines()
    assert Path(package).is_relative_to(ROOT)
    assert loaded == ""
