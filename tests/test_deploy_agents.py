"""Agents as deployed: a credential in the wrong role stops an agent at start-up with a clear
message, and no password is ever in a launched process's arguments (``ps`` shows them)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeci_mqtt.broker.config import credentials_path
from edgeci_mqtt.broker.launch import BrokerProcess, ProcessGroup

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    running = BrokerProcess(tmp_path_factory.mktemp("deploy"), ["dev-1", "dev-2"], orchestrators=["o1"])
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("command", "credential", "refused"),
    [
        (["device", "--model", "smallcnn"], "client", "edgeci/v1/devices/client/tasks"),
        (["device", "--model", "smallcnn"], "watcher", "edgeci/v1/devices/watcher/tasks"),  # reads no client data
        (["orchestrator", "--model", "smallcnn"], "dev-2", "$share/edgeci-orchestrators/"),
    ],
)
def test_an_agent_whose_credential_may_not_act_in_its_role_exits_naming_what_was_refused(
    broker: BrokerProcess, command: list[str], credential: str, refused: str
) -> None:
    """Before: the device logged "online" while the broker dropped everything it sent and
    delivered it nothing (SUBACK 0x87 keeps the session)."""
    login = [
        "--broker",
        f"mqtt://127.0.0.1:{broker.port}",
        "--credentials",
        str(credentials_path(broker.workdir, credential)),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "edgeci_mqtt", command[0], *login, *command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"edgeci {command[0]}: error: {credential}: the broker") and refused in error, error
    assert "may not act in this role" in error and "Traceback" not in done.stderr
    assert "online, holding" not in done.stderr and "ready" not in done.stderr


def test_launched_processes_carry_no_password_in_their_arguments(broker: BrokerProcess, tmp_path: Path) -> None:
    """The launcher is handed URLs with passwords (``BrokerProcess.url``); the children get
    the login in their environment, readable only by their own user, and still log in."""
    group = ProcessGroup(tmp_path)
    try:
        group.start("dev-1", "device", "--broker", broker.url("dev-1"), "--model", "smallcnn")
        group.wait_for_log("dev-1", "online, holding", timeout=120)
        pid = group.processes["dev-1"].pid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        shown = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True).stdout
    finally:
        group.close()
    password = broker.credentials.passwords["dev-1"]
    assert not any(password.encode() in arg for arg in argv) and password not in shown, shown
    assert f"mqtt://dev-1@127.0.0.1:{broker.port}".encode() in argv
