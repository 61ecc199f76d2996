"""A cluster on real Mosquitto serving an ONNX file its members share, by the file's name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeci_mqtt.client import EdgeCIClient
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.device.programs import validate_program
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.exactness import float64_model
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models.held import ModelStore, model_files, weights_digest
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES
from edgeci_mqtt.wire import ProgramMessage, StepInput, TailRole
from tests.cluster import local_cluster, start_device
from tests.exactness import assert_float32_faithful
from tests.inprocess import memory_cluster
from tests.onnx_models import TinyMobile, TinySegmenter, export


@pytest.mark.pure
def test_roles_hold_and_serve_a_file_by_its_name(tmp_path: Path) -> None:
    """Over the in-memory bus: a store given ``files`` holds the model under the file's stem
    with the file's digest, and devices holding the same file serve it with every strategy."""
    module = TinyMobile()
    path = export(module, tmp_path / "mobile.onnx", (64, 64))
    store = ModelStore({}, files=model_files([path]))
    assert set(store.held) == {"mobile"} and store.digests["mobile"] == weights_digest("mobile", path, 0)
    with pytest.raises(EdgeCIError, match="two model files are named 'mobile'"):
        model_files([path, tmp_path / "copy" / "mobile.onnx"])
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref32, ref64 = module(x), float64_model(module)(x.double())
    with memory_cluster(store, devices=3) as cluster, cluster.client() as client:
        for strategy in STRATEGY_NAMES:
            result = client.infer(x, "mobile", strategy, timeout=60, size=64)
            assert_float32_faithful(result.logits, ref32, ref64, strategy)


@pytest.mark.broker
def test_a_cluster_serves_an_onnx_file_and_ignores_a_device_with_another(tmp_path: Path) -> None:
    """Every process is started with ``--model-file``; a device whose file of the same name
    holds other weights announces another digest and is never given the model's work."""
    module = TinyMobile()
    path = export(module, tmp_path / "mobile.onnx", (64, 64))
    (tmp_path / "other").mkdir()
    other = export(TinyMobile(), tmp_path / "other" / "mobile.onnx", (64, 64))
    with local_cluster(
        tmp_path / "cluster",
        devices=3,
        models="smallcnn",
        strategy="flow",
        start=2,
        device_args=("--model-file", str(path)),
        orchestrator_args=("--model-file", str(path)),
    ) as cluster:
        start_device(cluster.group, cluster.broker, "dev-3", "smallcnn", "--model-file", str(other))
        cluster.wait_for_tables({"dev-1", "dev-2", "dev-3"})
        x = torch.randn(1, 3, 64, 64)
        with torch.inference_mode():
            ref32, ref64 = module(x), float64_model(module)(x.double())
        with EdgeCIClient(cluster.broker.address("client")) as client:
            for strategy in ("flow", "edgeci", "modnn", "local"):
                result = client.infer(x, "mobile", strategy, timeout=120, size=64)
                assert_float32_faithful(result.logits, ref32, ref64, strategy)
                assert result.devices and "dev-3" not in result.devices, strategy
        # The command line asks for a file by its name, at its own size.
        cluster.broker.add_user("client", "cli-user")
        out = tmp_path / "logits.npy"
        env = {
            **os.environ,
            "EDGECI_USERNAME": "cli-user",
            "EDGECI_PASSWORD": cluster.broker.credentials.passwords["cli-user"],
        }
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgeci_mqtt",
                "infer",
                "--broker",
                f"mqtt://127.0.0.1:{cluster.broker.port}",
                "--model-file",
                str(path),
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            env=env,
        )
        assert "model mobile" in done.stdout
        image = load_input(SAMPLE_IMAGE, 64)
        with torch.inference_mode():
            assert_float32_faithful(
                torch.from_numpy(np.load(out)), module(image), float64_model(module)(image.double())
            )


@pytest.mark.pure
def test_a_device_refuses_tail_work_for_a_model_whose_output_is_a_map(tmp_path: Path) -> None:
    """What an orchestrator credential could send: a program giving a device the tail of a
    segmenter (which has none) is refused with a clear reason, not an AttributeError."""
    path = export(TinySegmenter(), tmp_path / "seg.onnx", (36, 28))
    store = ModelStore({}, files=model_files([path]))
    held = store.get("seg")
    final = held.shapes(36, 28)[-1]
    role = TailRole((StepInput(TileRegion.whole(final.height, final.width), "b"),), "o1")
    program = ProgramMessage(
        request="r1",
        orchestrator="o1",
        model="seg",
        digest=held.digest,
        input_hw=(36, 28),
        steps=(),
        expires_s=5.0,
        tail=role,
    )
    with pytest.raises(WireError, match="has no tail for a device: its output is a map"):
        validate_program(program, "a", store, lambda *_: True)
