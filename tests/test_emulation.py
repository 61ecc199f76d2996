"""The emulated edge cluster: namespaces, shaping, CPU quotas, one exact inference, clean teardown."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeci_mqtt.emulation.network import down, leftovers
from edgeci_mqtt.emulation.processes import emulated_run
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.planner.cluster import parse_cluster

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
    reason="the emulated cluster needs root and iproute2 (ip, tc)",
)
PREFIX = "ectest"
SPEC = parse_cluster(
    {
        "name": "two",
        "broker": {"cpu": 0.5, "bandwidth_mbit": 200, "latency_ms": 0.2},
        "devices": [
            {"name": "a", "cpu": 0.5, "bandwidth_mbit": 100, "latency_ms": 2},
            {"name": "b", "cpu": 0.25, "bandwidth_mbit": 50, "latency_ms": 5},
        ],
    }
)


def test_two_device_cluster_runs_one_exact_inference_and_leaves_nothing(
    tmp_path: Path, chains: dict[str, StageChain]
) -> None:
    out = tmp_path / "logits.npy"
    with emulated_run(SPEC, tmp_path, "smallcnn", prefix=PREFIX, net=88) as run:
        assert set(leftovers(PREFIX)) >= {f"{PREFIX}-hub", f"{PREFIX}-0", f"{PREFIX}-1"}
        client = [
            sys.executable,
            "-m",
            "edgeci_mqtt",
            "infer",
            "--broker",
            run.url("client"),
            "--model",
            "smallcnn",
            "--size",
            "96",
            "--output",
            str(out),
            "--timeout",
            "120",
        ]
        answer = subprocess.run(run.in_hub(*client), capture_output=True, text=True, timeout=180)
        assert answer.returncode == 0, answer.stderr[-2000:] + run.group.log_text("orchestrator")[-2000:]
        # the agents measured their shaped, delayed links through the relays
        assert "link" in run.group.log_text("a") and "link" in run.group.log_text("b")
    with torch.inference_mode():
        expected = chains["smallcnn"].model(load_input(SAMPLE_IMAGE, 96))
    assert torch.allclose(torch.from_numpy(np.load(out)), expected, atol=1e-4, rtol=1e-4)
    assert leftovers(PREFIX) == []
    down(PREFIX)  # idempotent
    assert leftovers(PREFIX) == []


def test_cluster_command_up_status_down(capsys: pytest.CaptureFixture[str]) -> None:
    from edgeci_mqtt.cli import main

    try:
        assert main(["cluster", "up", "--cluster", "hetero4", "--prefix", "ectcli", "--net", "89"]) == 0
        assert "pi3: namespace ectcli-3" in capsys.readouterr().out
        assert {"ectcli-hub", "ectcli-0", "ectcli-3"} <= set(leftovers("ectcli"))
    finally:
        assert main(["cluster", "down", "--prefix", "ectcli"]) == 0
    assert leftovers("ectcli") == []
    assert main(["cluster", "status", "--prefix", "ectcli"]) == 0
    assert "nothing named ectcli-*" in capsys.readouterr().out
