"""Deployment files: the committed broker config matches the generator; secrets are private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from edgeci_mqtt.cli import build_parser
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.runtime.broker_config import Credentials, acl_text, mosquitto_conf, write_broker_config, write_secret

REPO = Path(__file__).resolve().parent.parent


def test_committed_broker_files_match_the_generator() -> None:
    assert (REPO / "broker" / "acl").read_text() == acl_text()
    assert (REPO / "broker" / "mosquitto.conf").read_text() == mosquitto_conf("/mosquitto/config", 1883)
    assert not (REPO / "broker" / "passwd").exists(), "credentials must not be committed"


def test_compose_file_names_real_services_files_and_commands() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"broker", "orchestrator", "device-1", "device-4"} <= set(services)
    assert services["broker"]["image"].startswith("eclipse-mosquitto:2")
    parser = build_parser()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (REPO / source).exists(), f"{name} mounts missing {source}"
        if "build" in service:
            assert (REPO / service["build"] / "Dockerfile").is_file()
        command = service.get("command")
        if command:
            assert command[0] == "edgeci"
            parser.parse_args(command[1:])  # exits on an unknown option or subcommand
    device_config = yaml.safe_load((REPO / "devices" / "device.example.yaml").read_text())
    assert set(device_config) <= {"id", "broker", "credentials", "models", "threads", "seed"}


def test_systemd_unit_runs_the_agent_with_restart() -> None:
    unit = (REPO / "devices" / "edgeci-device.service").read_text()
    assert "ExecStart=/opt/edgeci/.venv/bin/edgeci device --config /etc/edgeci/device.yaml" in unit
    assert "Restart=always" in unit and "EnvironmentFile=/etc/edgeci/device.env" in unit
    build_parser().parse_args(["device", "--config", "/etc/edgeci/device.yaml"])


def test_dockerfile_installs_the_cpu_torch_and_the_package() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile and "pip install --no-cache-dir ." in dockerfile
    for copied in ("pyproject.toml", "README.md", "edgeci_mqtt"):
        assert (REPO / copied).exists()


def test_broker_credentials_are_private_from_creation_and_never_silently_replaced(tmp_path: Path) -> None:
    out = tmp_path / "broker"
    first = write_broker_config(out, ["dev-1", "dev-2"])
    for name in ("passwd", "credentials.yaml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    with pytest.raises(EdgeCIError, match="--force"):
        write_broker_config(out, ["dev-1", "dev-2"])
    assert Credentials.load(out / "credentials.yaml") == first  # untouched by the refusal
    second = write_broker_config(out, ["dev-1", "dev-2"], force=True)
    assert second != first and Credentials.load(out / "credentials.yaml") == second
    assert stat.S_IMODE((out / "passwd").stat().st_mode) == 0o600
    write_broker_config(out, ["dev-1"], passwords=False)  # config and ACL only: no secret touched
    assert Credentials.load(out / "credentials.yaml") == second


def test_a_secret_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "secret").symlink_to(target)
    with pytest.raises(EdgeCIError, match="exists"):
        write_secret(tmp_path / "secret", "s3cret")
    write_secret(tmp_path / "secret", "s3cret", force=True)  # replaces the link itself
    assert target.read_text() == "keep" and not (tmp_path / "secret").is_symlink()
