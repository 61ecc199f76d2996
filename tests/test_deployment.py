"""Deployment files: the committed broker config matches the generator; secrets are private;
as root, a generated broker runs as the ``mosquitto`` user. (Tiers mixed: each test is marked.)"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeci_mqtt.broker import config as broker_config
from edgeci_mqtt.broker.config import (
    DYNSEC_FILE,
    EVERY_INTERFACE,
    Credentials,
    TlsListener,
    access_problems,
    credentials_path,
    mosquitto_conf,
    write_broker_config,
    write_secret,
)
from edgeci_mqtt.broker.dynsec import ADMIN_USER, administer
from edgeci_mqtt.broker.mosquitto import DOCKER_PLUGIN, MosquittoProcess, free_port
from edgeci_mqtt.bus.address import BrokerAddress
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.cli import build_parser, main
from edgeci_mqtt.errors import EdgeCIError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.pure
def test_committed_broker_files_match_the_generator() -> None:
    conf = mosquitto_conf("/mosquitto/config", 1883, bind=EVERY_INTERFACE, plugin=DOCKER_PLUGIN)
    assert (REPO / "broker" / "mosquitto.conf").read_text() == conf  # every interface of its container
    for secret in (DYNSEC_FILE, "credentials", "passwd", "acl"):
        assert not (REPO / "broker" / secret).exists(), f"{secret} must not be committed"


@pytest.mark.pure
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


@pytest.mark.pure
def test_systemd_unit_runs_the_agent_with_restart() -> None:
    unit = (REPO / "devices" / "edgeci-device.service").read_text()
    assert "ExecStart=/opt/edgeci/.venv/bin/edgeci device --config /etc/edgeci/device.yaml" in unit
    assert "Restart=always" in unit and "EnvironmentFile=/etc/edgeci/device.env" in unit
    build_parser().parse_args(["device", "--config", "/etc/edgeci/device.yaml"])


@pytest.mark.pure
def test_dockerfile_installs_the_cpu_torch_and_the_package() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile and "pip install --no-cache-dir ." in dockerfile
    for copied in ("pyproject.toml", "README.md", "edgeci_mqtt"):
        assert (REPO / copied).exists()


@pytest.mark.broker
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


@pytest.mark.pure
def test_a_secret_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "secret").symlink_to(target)
    with pytest.raises(EdgeCIError, match="exists"):
        write_secret(tmp_path / "secret", "s3cret")
    write_secret(tmp_path / "secret", "s3cret", force=True)  # replaces the link itself
    assert target.read_text() == "keep" and not (tmp_path / "secret").is_symlink()


@pytest.mark.pure
def test_broker_config_can_write_a_ready_tls_listener_bound_to_an_address() -> None:
    tls = TlsListener.in_dir(8883, "/mosquitto/config/certs", require_certificate=True)
    conf = mosquitto_conf("/mosquitto/config", 1883, bind="10.0.0.2", plugin=DOCKER_PLUGIN, tls=tls)
    assert "listener 8883 10.0.0.2\n" in conf and "listener 1883" not in conf  # TLS only
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


@pytest.mark.pure
def test_with_tls_the_broker_listens_with_tls_only_unless_told_to_keep_loopback() -> None:
    tls = TlsListener.in_dir(8883, "/mosquitto/config/certs")
    only = mosquitto_conf("/mosquitto/config", 1883, bind="10.0.0.2", plugin=DOCKER_PLUGIN, tls=tls)
    assert [line for line in only.splitlines() if line.startswith("listener")] == ["listener 8883 10.0.0.2"]
    kept = mosquitto_conf("/mosquitto/config", 1883, bind="10.0.0.2", plugin=DOCKER_PLUGIN, tls=tls, plain_local=True)
    listeners = [line for line in kept.splitlines() if line.startswith("listener")]
    assert listeners == ["listener 1883 127.0.0.1", "listener 8883 10.0.0.2"]  # plaintext never leaves the host
    plain = mosquitto_conf("/mosquitto/config", 1883, plugin=DOCKER_PLUGIN)
    assert [line for line in plain.splitlines() if line.startswith("listener")] == ["listener 1883 127.0.0.1"]


@pytest.mark.pure
def test_access_problems_name_the_directory_the_broker_user_cannot_enter(tmp_path: Path) -> None:
    """A 0700 parent (as `mktemp -d` makes) keeps another user out of everything below it."""
    private = tmp_path / "private"
    (private / "broker").mkdir(parents=True)
    (private / "broker" / DYNSEC_FILE).write_text("{}")
    (private / "broker" / DYNSEC_FILE).chmod(0o600)
    private.chmod(0o700)
    nobody = 65534
    problems = access_problems({private / "broker" / DYNSEC_FILE: "rw"}, nobody, [nobody])
    assert any(f"cannot enter {private} (drwx------): chmod o+x {private}" in p for p in problems), problems
    assert any(f"cannot read/write {private / 'broker' / DYNSEC_FILE}" in p for p in problems), problems
    private.chmod(0o711)
    (private / "broker" / DYNSEC_FILE).chmod(0o666)
    problems = access_problems({private / "broker" / DYNSEC_FILE: "rw"}, nobody, [nobody])
    below = [p for p in problems if str(private) in p]
    assert below == []  # (pytest's own temporary directories above it are 0700 too)
    assert access_problems({private / "broker" / DYNSEC_FILE: "rw"}, 0, [0]) == []  # root reads anything


@pytest.mark.emulated(reason="needs root (skipped without): only root hands the files to the mosquitto user")
def test_broker_config_refuses_an_out_dir_mosquittos_user_cannot_reach(capsys: pytest.CaptureFixture[str]) -> None:
    """Run as root under a 0700 directory, the broker would log "File is not readable" for its
    plugin file and refuse every login: broker-config says so and writes nothing."""
    if os.geteuid() != 0:
        pytest.skip("only root hands the files to the mosquitto user")
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user on this machine")
    private = Path(tempfile.mkdtemp(prefix="edgeci-private-", dir="/tmp"))  # 0700, as mktemp -d makes
    try:
        assert main(["broker-config", "--out", str(private / "broker"), "--devices", "1"]) == 2
        err = capsys.readouterr().err
        assert f"cannot enter {private}" in err and f"chmod o+x {private}" in err, err
        assert not (private / "broker").exists()  # nothing written
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.emulated(reason="needs root (skipped without): only root starts a broker that drops to another user")
def test_a_generated_deployment_broker_runs_as_the_mosquitto_user(tmp_path: Path) -> None:
    """Run as root, broker-config hands the plugin's file and the data directory to the
    ``mosquitto`` user; a broker started from that config drops to it and can still save
    users added while it runs."""
    if os.geteuid() != 0:
        pytest.skip("needs root: only root can start a broker that drops to another user")
    out = Path(tempfile.mkdtemp(prefix="edgeci-deploy-", dir="/tmp"))
    try:
        out.chmod(0o711)  # the broker's user must reach its files
        port = free_port()
        write_broker_config(out, {"dev-1": "device"}, port=port, bind="127.0.0.1")
        owner = pwd.getpwuid((out / "dynamic-security.json").stat().st_uid).pw_name
        assert owner == "mosquitto" and stat.S_IMODE((out / "dynamic-security.json").stat().st_mode) == 0o600
        with (out / "mosquitto.log").open("wb") as log:
            broker = MosquittoProcess(out / "mosquitto.conf", log, "127.0.0.1", port)
            try:
                status = Path(f"/proc/{broker.process.pid}/status").read_text()
                uid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
                assert pwd.getpwuid(uid).pw_name == "mosquitto"
                admin = Credentials.load(credentials_path(out, ADMIN_USER)).passwords[ADMIN_USER]
                with administer(
                    MqttBus(BrokerAddress("127.0.0.1", port, username=ADMIN_USER, password=admin))
                ) as dynsec:
                    dynsec.add_user("device", "dev-2")
            finally:
                broker.stop()
        assert "dev-2" in (out / "dynamic-security.json").read_text()  # saved by the broker's user
        assert "Error saving" not in (out / "mosquitto.log").read_text()
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.broker
def test_no_password_in_mosquitto_ctrl_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin's password goes to mosquitto_ctrl on its prompt, not in its arguments (ps shows those)."""
    seen: list[list[str]] = []
    real = subprocess.run

    def spy(command: list[str], *args: Any, **kwargs: Any) -> Any:
        seen.append(list(command))
        return real(command, *args, **kwargs)

    monkeypatch.setattr(broker_config.subprocess, "run", spy)
    creds = write_broker_config(tmp_path / "broker", {"dev-1": "device"}, run_as=getpass.getuser())
    assert any("mosquitto_ctrl" in c[0] for c in seen)
    assert not any(password in " ".join(c) for c in seen for password in creds.passwords.values())
