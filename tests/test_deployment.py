"""Deployment files: the committed broker config matches the generator; secrets are private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from edgeci_mqtt.cli import build_parser
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.runtime.broker_config import (
    DYNSEC_FILE,
    Credentials,
    TlsListener,
    credentials_path,
    mosquitto_conf,
    write_broker_config,
    write_secret,
)
from edgeci_mqtt.runtime.dynsec import ADMIN_USER
from edgeci_mqtt.runtime.mosquitto import DOCKER_PLUGIN

REPO = Path(__file__).resolve().parent.parent


def test_committed_broker_files_match_the_generator() -> None:
    conf = mosquitto_conf("/mosquitto/config", 1883, plugin=DOCKER_PLUGIN)
    assert (REPO / "broker" / "mosquitto.conf").read_text() == conf
    for secret in (DYNSEC_FILE, "credentials", "passwd", "acl"):
        assert not (REPO / "broker" / secret).exists(), f"{secret} must not be committed"


def test_compose_file_names_real_services_files_and_commands() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"broker", "orchestrator", "device-1", "device-4"} <= set(services)
    assert services["broker"]["image"].startswith("eclipse-mosquitto:2")
    generated = {  # by `edgeci broker-config`, as the file's header says
        "./broker/dynamic-security.json",
        "./broker/data",
        *(f"./broker/credentials/{user}.yaml" for user in ("orchestrator", "dev-1", "dev-2", "dev-3", "dev-4")),
    }
    parser = build_parser()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source in generated:
                continue
            assert (REPO / source).exists(), f"{name} mounts missing {source}"
        if "build" in service:
            assert (REPO / service["build"] / "Dockerfile").is_file()
        command = service.get("command")
        if command:
            assert command[0] == "edgeci"
            parser.parse_args(command[1:])  # exits on an unknown option or subcommand
    device_config = yaml.safe_load((REPO / "devices" / "device.example.yaml").read_text())
    assert set(device_config) <= {"id", "broker", "credentials", "models", "threads", "seed"}
    for name in ("orchestrator", "device-1", "device-4"):  # each process gets only its own secret
        secrets = [v for v in services[name]["volumes"] if v.startswith("./broker/")]
        assert len(secrets) == 1 and "/credentials/" in secrets[0], name


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
    """One file per user holding only its own secret, 0600 like the plugin's file; a second
    run refuses to replace them without --force."""
    out = tmp_path / "broker"
    users = {"dev-1": "device", "dev-2": "device", "orchestrator": "orchestrator", "client": "client"}
    first = write_broker_config(out, users)  # type: ignore[arg-type]
    assert set(first.passwords) == {*users, ADMIN_USER}
    for user, password in first.passwords.items():
        path = credentials_path(out, user)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, user
        assert Credentials.load(path).passwords == {user: password}  # its own secret, nothing else
    dynsec = (out / DYNSEC_FILE).read_text()
    assert stat.S_IMODE((out / DYNSEC_FILE).stat().st_mode) == 0o600
    assert not any(password in dynsec for password in first.passwords.values())  # hashed by Mosquitto
    with pytest.raises(EdgeCIError, match="--force"):
        write_broker_config(out, users)  # type: ignore[arg-type]
    assert Credentials.load(credentials_path(out, "dev-1")) == first.only("dev-1")  # untouched by the refusal
    second = write_broker_config(out, users, force=True)  # type: ignore[arg-type]
    assert second.passwords["dev-1"] != first.passwords["dev-1"]
    assert Credentials.load(credentials_path(out, "dev-1")) == second.only("dev-1")
    write_broker_config(out, users, passwords=False)  # type: ignore[arg-type]  # config only: no secret touched
    assert Credentials.load(credentials_path(out, "dev-1")) == second.only("dev-1")
    with pytest.raises(EdgeCIError, match="reserved"):
        write_broker_config(tmp_path / "other", {"edgeci-admin": "device"})


def test_a_secret_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "secret").symlink_to(target)
    with pytest.raises(EdgeCIError, match="exists"):
        write_secret(tmp_path / "secret", "s3cret")
    write_secret(tmp_path / "secret", "s3cret", force=True)  # replaces the link itself
    assert target.read_text() == "keep" and not (tmp_path / "secret").is_symlink()


def test_broker_config_can_write_a_ready_tls_listener_bound_to_an_address() -> None:
    tls = TlsListener.in_dir(8883, "/mosquitto/config/certs", require_certificate=True)
    conf = mosquitto_conf("/mosquitto/config", 1883, bind="10.0.0.2", plugin=DOCKER_PLUGIN, tls=tls)
    assert "listener 1883 10.0.0.2\n" in conf and "listener 8883 10.0.0.2\n" in conf
    for line in (
        "cafile /mosquitto/config/certs/ca.crt",
        "certfile /mosquitto/config/certs/server.crt",
        "keyfile /mosquitto/config/certs/server.key",
        "require_certificate true",
        "tls_version tlsv1.2",
    ):
        assert f"\n{line}\n" in conf, line
    args = build_parser().parse_args(["broker-config", "--tls-port", "8883", "--require-certificate", "--bind", "::1"])
    assert args.tls_port == 8883 and args.require_certificate and args.bind == "::1"
