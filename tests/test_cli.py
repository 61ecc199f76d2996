"""The ``edgeci`` command: models, infer, help and error exits."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeci_mqtt.cli import build_parser, main
from edgeci_mqtt.cli.demo_cmd import DEMO_MODELS, warm_then_time
from edgeci_mqtt.cli.device_cmd import default_tail_memory, held_models, merged, parse_medium
from edgeci_mqtt.core.link import Medium
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.exactness import float64_model, max_abs_diff
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models import HAND_CUT, build_model
from tests.exactness import assert_float32_faithful

pytestmark = pytest.mark.pure

REPO = Path(__file__).resolve().parent.parent


def test_models_prints_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--model", "smallcnn", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "smallcnn: 12 stages, input 3x64x64" in out
    assert re.search(r"^ *9 +features\.9 +conv +k3s2p1/k5s1p2 +32x5x9 ", out, re.M)
    assert re.search(r"^ *7 +features\.7 +residual +k7s2p3 +24x17x17 ", out, re.M)
    assert "tail (on the orchestrator): avgpool, fc" in out


def test_infer_matches_the_whole_model_and_saves_logits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "logits.npy"
    argv = [
        "infer",
        "--model",
        "smallcnn",
        "--seed",
        "2",
        "--blocks",
        "0-4,4-9,9-12",
        "--tiles",
        "2x3",
        "--size",
        "96",
        "--output",
        str(out_file),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    diff = float(re.search(r"max abs difference from the whole model: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert re.search(r"^ *1 +\d+ +\S", out, re.M)  # top-5 table rows
    logits = torch.from_numpy(np.load(out_file))
    model, x = build_model("smallcnn", seed=2), load_input(SAMPLE_IMAGE, 96)
    with torch.inference_mode():
        expected = model(x)
        assert_float32_faithful(logits, expected, float64_model(model)(x.double()))
    assert diff == pytest.approx(max_abs_diff(logits, expected), rel=5e-3)  # the printed difference is the real one


def test_infer_with_a_weights_file_and_array_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.pth"
    torch.save(build_model("smallcnn", seed=9).state_dict(), weights)
    np.save(tmp_path / "x.npy", np.ones((3, 33, 47), dtype=np.float32))
    assert (
        main(
            [
                "infer",
                "--model",
                "smallcnn",
                "--weights",
                str(weights),
                "--input",
                str(tmp_path / "x.npy"),
                "--tiles",
                "4x1",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert "input 3x33x47" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["infer", "--model", "smallcnn", "--blocks", "0-4,5-12"], "block 5-12 should start at stage 4"),
        (["infer", "--model", "smallcnn", "--weights", "missing.pth"], "missing.pth does not exist"),
        (["infer", "--model", "smallcnn", "--input", "missing.png"], "missing.png does not exist"),
        (["infer", "--model", "vgg16", "--size", "16"], "too small"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_tile_grid_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--tiles", "3by3"])
    assert exc.value.code == 2
    assert "--tiles" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process: a process per subcommand took 40 s, each importing torch anew.
    ``python -m edgeci_mqtt`` runs as a program, its ``__main__`` too."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"models", "infer"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0 and f"usage: edgeci {name}" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["edgeci", "infer", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("edgeci_mqtt", run_name="__main__")
    assert exc.value.code == 0 and "usage: edgeci infer" in capsys.readouterr().out


def test_a_device_offers_half_the_available_memory_for_tails_unless_told(tmp_path: Path) -> None:
    """A board is never handed more fully connected weights than it can hold by default."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        1000000 kB\nMemAvailable:     500000 kB\nMemFree: 100 kB\n")
    assert default_tail_memory(meminfo) == 500000 * 1024 // 2
    meminfo.write_text("MemTotal:        1000000 kB\n")  # an old kernel: no limit, as before
    assert default_tail_memory(meminfo) is None
    assert default_tail_memory(tmp_path / "absent") is None


def test_provision_takes_the_broker_options_before_or_after_its_action() -> None:
    """The README writes `edgeci provision add dev-5 --broker URL`; the older order works too."""
    parser = build_parser()
    after = parser.parse_args(["provision", "add", "dev-5", "--broker", "mqtt://hub:1", "--credentials", "a.yaml"])
    before = parser.parse_args(["provision", "--broker", "mqtt://hub:1", "--credentials", "a.yaml", "add", "dev-5"])
    for args in (after, before):
        assert (args.broker, args.credentials, args.name) == ("mqtt://hub:1", Path("a.yaml"), "dev-5")
    default = parser.parse_args(["provision", "list"])
    assert default.broker == "mqtt://127.0.0.1:1883"
    assert default.credentials == Path("broker/credentials/edgeci-admin.yaml")


def test_model_is_repeatable_on_the_device_as_on_the_orchestrator() -> None:
    parser = build_parser()
    device = parser.parse_args(["device", "--broker", "mqtt://h", "--model", "vgg16", "--model", "smallcnn"])
    orchestrator = parser.parse_args(
        ["orchestrator", "--broker", "mqtt://h", "--model", "vgg16", "--model", "smallcnn"]
    )
    assert held_models(device.model, device.models) == orchestrator.model == ["vgg16", "smallcnn"]
    older = parser.parse_args(["device", "--broker", "mqtt://h", "--models", "vgg16,resnet34=w.pth"])
    assert held_models(older.model, older.models) == ["vgg16", "resnet34=w.pth"]
    assert held_models(None, ["resnet34"]) == ["resnet34"]  # a config file's list
    assert held_models(None, None) == list(HAND_CUT)
    demo = parser.parse_args(["demo", "--model", "smallcnn", "--model", "resnet34"])
    assert held_models(demo.model, demo.models, DEMO_MODELS) == ["smallcnn", "resnet34"]
    assert held_models(None, None, DEMO_MODELS) == ["vgg16", "resnet34"]


def test_the_demo_warms_every_strategy_before_timing_any() -> None:
    """Timing the first strategy cold gave `local` 1,520 ms and `replicas` 362 ms on one device."""
    calls: list[str] = []
    timed = warm_then_time(["local", "edgeci", "replicas"], lambda s: calls.append(s) or len(calls))
    assert calls == ["local", "edgeci", "replicas"] * 2
    assert timed == {"local": 4, "edgeci": 5, "replicas": 6}  # the second, warm, runs


def test_the_device_example_documents_the_tail_memory_default_as_help_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["device", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "default: half the memory available once its models are built" in said
    example = (REPO / "devices" / "device.example.yaml").read_text()
    line = next(x for x in example.splitlines() if "tail_memory_mb" in x)
    assert "half the memory available once its models are built" in line and "no limit" not in line


def test_broker_config_listens_on_loopback_unless_told_and_tls_means_tls_only() -> None:
    parser = build_parser()
    assert parser.parse_args(["broker-config"]).bind == "127.0.0.1"
    args = parser.parse_args(["broker-config", "--tls-port", "8883", "--plain-localhost"])
    assert args.tls_port == 8883 and args.plain_localhost
    assert main(["broker-config", "--plain-localhost", "--no-passwords", "--out", "/nonexistent/x"]) == 2


def test_a_devices_medium_is_name_and_mbit_or_a_clear_error(tmp_path: Path) -> None:
    assert parse_medium("ap-1:40") == Medium("ap-1", 40.0)
    for bad in ("ap/1:40", "ap:0", "ap:x", ":40", "ap-1", "ap:nan", "ap:inf", "ap:-3"):
        with pytest.raises(EdgeCIError, match="NAME:MBIT"):
            parse_medium(bad)
    config = tmp_path / "device.yaml"
    config.write_text("broker: mqtt://localhost:1\nmedium: ap-1:40\n")
    args = build_parser().parse_args(["device", "--config", str(config)])
    assert merged(args, ("broker", "medium"))["medium"] == "ap-1:40"  # a key the config may hold
    args = build_parser().parse_args(["device", "--config", str(config), "--medium", "ap-2:10"])
    assert merged(args, ("broker", "medium"))["medium"] == "ap-2:10"  # the command line wins
