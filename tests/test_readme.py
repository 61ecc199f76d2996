"""The README's examples run as written: its Python example, and its real-cluster commands
on loopback (the fenced block under "A real cluster", each command a real process)."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from edgeci_mqtt.broker.config import Credentials
from edgeci_mqtt.broker.mosquitto import free_port, mosquitto_binary
from edgeci_mqtt.bus.address import BrokerAddress
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.wire import DEVICE_TASKS

README = Path(__file__).resolve().parent.parent / "README.md"
REPO = README.parent
EDGECI = str(Path(sys.executable).parent / "edgeci")
"""The installed command (``python -m`` from the clone's directory would import its copied files)."""
LONG_RUNNING = {"mosquitto", "device", "orchestrator", "watch"}
"""Commands that serve until stopped: each is started and waited for; the others run to the end."""


@pytest.mark.pure
def test_python_examples_in_the_readme_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})


@pytest.mark.pure
def test_readme_commands_exist() -> None:
    text = README.read_text()
    for script in re.findall(r"bash (scripts/\S+\.sh)", text):
        assert (README.parent / script).is_file(), script
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci and "bash scripts/test.sh" in text


def real_cluster_commands(host: str, port: int) -> list[list[str]]:
    """The README's "A real cluster" block, comments dropped, with its broker host (``hub``)
    and port (1883) replaced by ``host`` and ``port``."""
    block = re.search(r"A real cluster.*?```sh\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no sh block under 'A real cluster'"
    text = re.sub(r"\b1883\b", str(port), re.sub(r"\bhub\b", host, block.group(1)))
    return [words for line in text.splitlines() if (words := shlex.split(line, comments=True))]


@pytest.mark.pure
def test_readme_cluster_files_and_paths_are_real() -> None:
    """Every relative path a command reads that broker-config does not write is in the repository."""
    for words in real_cluster_commands("127.0.0.1", 1883):
        for word in words:
            if "/" in word and not word.startswith(("broker/", "mqtt")):
                assert (REPO / word).exists(), word


class Running:
    """The README's long-running processes, each logging to a file; stopped by PID."""

    def __init__(self, cwd: Path) -> None:
        self.cwd, self.processes, self.logs = cwd, dict[str, subprocess.Popen[bytes]](), dict[str, IO[bytes]]()

    def start(self, name: str, command: list[str]) -> None:
        self.logs[name] = (self.cwd / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            command, cwd=self.cwd, stdout=self.logs[name], stderr=subprocess.STDOUT, env=_env()
        )

    def log(self, name: str) -> str:
        return (self.cwd / f"{name}.log").read_text(errors="replace")

    def wait(self, name: str, ready: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
        """Until ``ready()``; fails at once if the process exits."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.processes[name].poll() is None, f"{name} exited: {self.log(name)[-2000:]}"
            assert time.monotonic() < deadline, f"{name}: not {what} within {timeout:.0f} s: {self.log(name)[-2000:]}"
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for log in self.logs.values():
            log.close()


def _env() -> dict[str, str]:
    """One torch thread each (a 2-core machine runs them all), and no login from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECI_")}
    return dict(env, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def clone() -> Iterator[Path]:
    """A working directory the README's commands run in, as a clone's root: the repository
    files they name are there. Under /tmp and open to others, as a deployment directory is:
    Mosquitto started as root drops to its own user, which must reach the files."""
    where = Path(tempfile.mkdtemp(prefix="edgeci-readme-", dir="/tmp"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.broker(reason="the README's commands start Mosquitto and the agents as processes")
def test_the_readme_real_cluster_commands_work_as_written(clone: Path) -> None:
    port = free_port()
    commands = real_cluster_commands("127.0.0.1", port)
    programs = [(c[0], c[1] if c[0] == "edgeci" else c[0]) for c in commands]
    assert [p for _, p in programs] == [
        "broker-config", "mosquitto", "device", "orchestrator", "watch", "infer", "provision",
    ]  # fmt: skip
    for words in commands:  # the repository files they read, at the same relative paths
        for word in words:
            if (REPO / word).is_file() and not (clone / word).exists() and "/" in word:
                (clone / word).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / word, clone / word)
    running = Running(clone)
    try:
        for words in commands:
            program = words[1] if words[0] == "edgeci" else words[0]
            argv = [EDGECI if words[0] == "edgeci" else mosquitto_binary(), *words[1:]]
            if program in LONG_RUNNING:
                running.start(program, argv)
            else:
                done = subprocess.run(argv, cwd=clone, capture_output=True, text=True, timeout=120, env=_env())
                assert done.returncode == 0, f"{shlex.join(words)}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            if program == "mosquitto":
                running.wait(program, lambda: _listening(port), "listening")
            elif program == "device":
                running.wait(program, lambda: "online, holding" in running.log("device"), "online")
            elif program == "orchestrator":
                running.wait(program, lambda: "ready" in running.log("orchestrator"), "ready")
            elif program == "watch":
                running.wait(program, lambda: "device dev-1 ONLINE" in running.log("watch"), "showing dev-1")
                before = len(running.log("watch"))
            elif program == "infer":
                assert re.search(r"^latency [\d.]+ ms", done.stdout, re.M) and "probability" in done.stdout
                assert "devices dev-1" in done.stdout, done.stdout
                # the request's traffic reaches the watcher: the work handed to dev-1
                shown = functools.partial(lambda start: "devices/dev-1/tasks" in running.log("watch")[start:], before)
                running.wait("watch", shown, "showing it")
            elif program == "provision":
                assert "added device dev-5" in done.stdout
                _connects_as_device(clone / "broker" / "credentials" / "dev-5.yaml", port)
        assert "File is not readable" not in running.log("mosquitto")
    finally:
        running.stop()


def _connects_as_device(credentials: Path, port: int) -> None:
    """The new device logs in and may read its own tasks (the broker grants its role)."""
    password = Credentials.load(credentials).passwords["dev-5"]
    bus = MqttBus(BrokerAddress("127.0.0.1", port, username="dev-5", password=password), require_subscriptions=True)
    bus.subscribe(DEVICE_TASKS.build(device="dev-5"))
    bus.start()
    bus.stop()
