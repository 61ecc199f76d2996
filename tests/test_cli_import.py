"""Bringing a model of one's own to ``edgeci models|plan|simulate|infer``: an ONNX file or a module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgeci_mqtt.cli import main
from edgeci_mqtt.exactness import faithful, float64_model
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from tests.onnx_models import TinyMobile, export
from tests.planning import flat_profile

pytestmark = pytest.mark.pure


@pytest.fixture(scope="module")
def mobile(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyMobile, Path]:
    module = TinyMobile()
    return module, export(module, tmp_path_factory.mktemp("models") / "mobile.onnx", (64, 64))


def test_models_lists_an_onnx_files_stages(mobile: tuple[TinyMobile, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--model-file", str(mobile[1])]) == 0
    out = capsys.readouterr().out
    assert "mobile: 12 stages, input 3x64x64" in out
    assert "stages.0   graph  k3s2p1" in out


def test_plan_and_simulate_an_onnx_file(
    mobile: tuple[TinyMobile, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(flat_profile(10.0).to_dict()))
    common = ["--model-file", str(mobile[1]), "--cluster", "hetero4", "--profile", str(profile)]
    assert main(["plan", *common, "--strategy", "edgeci"]) == 0
    assert "edgeci plan of mobile (3x64x64) on hetero4" in capsys.readouterr().out
    assert main(["simulate", *common, "--strategies", "local,flow"]) == 0
    out = capsys.readouterr().out
    assert "mobile on hetero4" in out and "flow" in out


def test_infer_an_onnx_file_in_process(
    mobile: tuple[TinyMobile, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module, path = mobile
    logits = tmp_path / "logits.npy"
    assert main(["infer", "--model-file", str(path), "--tiles", "2x2", "--output", str(logits)]) == 0
    assert "model mobile, input 3x64x64" in capsys.readouterr().out
    x = load_input(SAMPLE_IMAGE, 64)
    with torch.inference_mode():
        ref32, ref64 = module(x), float64_model(module)(x.double())
    assert faithful(torch.from_numpy(np.load(logits)), ref32, ref64)


def test_infer_a_traced_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["infer", "--model-module", "tests.onnx_models:TinyMobile", "--size", "48", "--tiles", "2x2"]) == 0
    assert "model TinyMobile, input 3x48x48" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "--model-module", "tests.onnx_models"], "expected package.module:factory"),
        (["models", "--model-module", "tests.onnx_models:Nothing"], "has no attribute 'Nothing'"),
        (["models", "--model-file", "/nonexistent.onnx"], "cannot read model file"),
        (["models", "--model-file", str(SAMPLE_IMAGE)], "not a readable ONNX file"),
        (
            ["infer", "--model-module", "tests.onnx_models:TinyMobile", "--broker", "mqtt://x@127.0.0.1:1"],
            "a cluster serves models by name",
        ),
        (["infer", "--model", "alexnet"], "unknown model 'alexnet'"),
    ],
)
def test_a_model_that_cannot_be_imported_is_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
