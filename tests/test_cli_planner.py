"""``edgeci profile``, ``plan`` and ``simulate``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from edgeci_mqtt.cli import main
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES
from tests.planning import flat_profile

pytestmark = pytest.mark.pure


@pytest.fixture()
def profile_file(tmp_path: Path) -> Path:
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump(flat_profile(100.0).to_dict()))
    return path


def test_profile_prints_and_writes_a_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.yaml"
    assert main(["profile", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "convolution GFLOP/s" in text and re.search(r"^ *576 ", text, re.M)
    assert set(yaml.safe_load(out.read_text())) >= {"conv_depths", "conv_rates", "rates", "pool_rates"}


def test_plan_prints_blocks_tasks_and_times(profile_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "plan",
        "--model",
        "resnet34",
        "--cluster",
        "hetero4",
        "--strategy",
        "edgeci",
        "--profile",
        str(profile_file),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "edgeci plan of resnet34 (3x224x224) on hetero4" in out
    assert re.search(r"predicted time: planner estimate [\d.]+ ms, simulated [\d.]+ ms", out)
    assert re.search(r"^jetson +\[\d+,\d+\)x\[0,\d+\)", out, re.M)


def test_simulate_compares_every_strategy(
    tmp_path: Path, profile_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gantt = tmp_path / "g.png"
    argv = [
        "simulate",
        "--model",
        "vgg16",
        "--cluster",
        "hetero8",
        "--profile",
        str(profile_file),
        "--gantt",
        str(gantt),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = {m.group(1): m for m in re.finditer(r"^(\w+) +([\d.]+) +([\d.]+)x +([\d.]+)$", out, re.M)}
    assert set(rows) == set(STRATEGY_NAMES)
    assert rows["local"].group(3) == "1.00"
    assert min(float(rows[b].group(4)) for b in ("modnn", "deepthings", "aofl")) == 1.0
    assert gantt.stat().st_size > 10_000 and gantt.read_bytes()[:4] == b"\x89PNG"


def test_bad_planner_arguments(profile_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--cluster", "nowhere.yaml", "--profile", str(profile_file)]) == 2
    assert "cluster file nowhere.yaml does not exist" in capsys.readouterr().err
    assert main(["simulate", "--cluster", "homo4", "--strategies", "edgeci,magic", "--profile", str(profile_file)]) == 2
    assert "unknown strategy magic" in capsys.readouterr().err
