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

from edgeci_mqtt.emulation.network import down, leftovers, up
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.planner.cluster import parse_cluster
from edgeci_mqtt.runtime.launch import BrokerProcess, ProcessGroup

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
    cluster = up(SPEC, prefix=PREFIX, net=88)
    names = [d.name for d in SPEC.devices]
    group = ProcessGroup(tmp_path)
    broker = None
    try:
        assert set(leftovers(PREFIX)) >= {f"{PREFIX}-hub", f"{PREFIX}-0", f"{PREFIX}-1"}
        broker = BrokerProcess(
            tmp_path / "broker",
            names,
            port=1883,
            bind="0.0.0.0",
            wrap=lambda cmd: ["ip", "netns", "exec", cluster.hub, *cmd],
        )
        for index, device in enumerate(SPEC.devices):
            relay = [
                sys.executable,
                "-m",
                "edgeci_mqtt.emulation.relay",
                "--listen",
                "127.0.0.1:1883",
                "--target",
                f"{cluster.hub_address}:1883",
                "--delay-ms",
                str(device.link.latency_ms),
            ]
            group.start_command(f"relay-{device.name}", ["ip", "netns", "exec", cluster.namespace(index), *relay])
            group.start(
                device.name,
                "device",
                "--broker",
                broker.url(device.name, "127.0.0.1"),
                "--id",
                device.name,
                "--models",
                "smallcnn",
                wrap=lambda cmd, i=index: cluster.in_namespace(i, *cmd),
            )
        group.start(
            "orchestrator",
            "orchestrator",
            "--broker",
            broker.url("orchestrator", cluster.hub_address),
            "--id",
            "emu",
            "--model",
            "smallcnn",
            wrap=lambda cmd: cluster.in_namespace(None, *cmd),
        )
        for device in names:
            group.wait_for_log(device, "online, holding", timeout=120)
        group.wait_for_log("orchestrator", "ready", timeout=120)
        out = tmp_path / "logits.npy"
        client = [
            sys.executable,
            "-m",
            "edgeci_mqtt",
            "infer",
            "--broker",
            broker.url("client", cluster.hub_address),
            "--model",
            "smallcnn",
            "--size",
            "96",
            "--output",
            str(out),
            "--timeout",
            "120",
        ]
        answer = subprocess.run(
            ["ip", "netns", "exec", cluster.hub, *client], capture_output=True, text=True, timeout=180
        )
        assert answer.returncode == 0, answer.stderr[-2000:] + group.log_text("orchestrator")[-2000:]
        with torch.inference_mode():
            expected = chains["smallcnn"].model(load_input(SAMPLE_IMAGE, 96))
        assert torch.allclose(torch.from_numpy(np.load(out)), expected, atol=1e-4, rtol=1e-4)
        # the device link really is shaped and delayed: the agent measured it through the relay
        assert "link" in group.log_text("a")
    finally:
        group.close()
        if broker is not None:
            broker.stop()
        down(PREFIX)
    assert leftovers(PREFIX) == []
    down(PREFIX)  # idempotent


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
