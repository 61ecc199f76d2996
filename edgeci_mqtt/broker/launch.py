"""Start and stop the processes of a local cluster: a Mosquitto broker, agents, orchestrators.

Used by ``edgeci demo`` and by the integration tests: the broker gets a configuration
from :mod:`broker_config` on a free loopback port; agents and orchestrators are separate
``python -m edgeci_mqtt`` processes; everything is stopped by PID, also on errors.
No password is ever in a child's arguments, which every user of the machine can read
(``ps``, ``/proc/PID/cmdline``): a ``--broker`` URL's login moves to the child's
environment (``EDGECI_USERNAME``/``EDGECI_PASSWORD``), readable only by its own user.
"""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO
from urllib.parse import quote

from edgeci_mqtt.broker.config import LOOPBACK, Credentials, TlsListener, users_by_role, write_broker_config
from edgeci_mqtt.broker.dynsec import ADMIN_USER, DynsecAdmin, administer
from edgeci_mqtt.broker.mosquitto import MosquittoProcess, free_port
from edgeci_mqtt.bus.address import BrokerAddress
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.wire.topics import Role

__all__ = ["BrokerProcess", "ProcessGroup", "free_port", "without_passwords"]


class BrokerProcess:
    """A private Mosquitto with the project's configuration, roles and fresh credentials:
    a user for each device, orchestrator, client and watcher named here (more with
    :meth:`add_user` while it runs)."""

    def __init__(
        self,
        workdir: Path,
        devices: Sequence[str],
        port: int | None = None,
        bind: str = "127.0.0.1",
        wrap: Callable[[list[str]], list[str]] | None = None,
        orchestrators: Sequence[str] = ("orchestrator",),
        clients: Sequence[str] = ("client",),
        watchers: Sequence[str] = ("watcher",),
        tls: TlsListener | None = None,
    ) -> None:
        """``wrap`` runs the broker elsewhere (a network namespace); readiness is then probed
        from there too. ``tls``: a TLS listener; the plain one is then kept on loopback only
        (for the launcher's own checks and tools)."""
        self.tls = tls
        self.workdir, self.port, self.bind, self.wrap = workdir, port or free_port(), bind, wrap
        if tls is not None and bind not in ("", LOOPBACK):
            raise EdgeCIError(f"a private TLS broker keeps its plaintext listener on {LOOPBACK}: bind it there")
        users = users_by_role(devices, orchestrators, clients, watchers)
        self.credentials: Credentials = write_broker_config(  # a private broker: fresh credentials every time
            workdir,
            users,
            port=self.port,
            bind=bind,
            run_as=getpass.getuser(),
            force=True,
            tls=tls,
            plain_local=tls is not None,
        )
        self.log_path = workdir / "mosquitto.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        self._launch()

    def _launch(self) -> None:
        host = "127.0.0.1" if self.bind in ("", "0.0.0.0") else self.bind
        self.mosquitto = MosquittoProcess(self.workdir / "mosquitto.conf", self._log, host, self.port, self.wrap)
        self.process = self.mosquitto.process

    def restart(self) -> None:
        """Stop and start the same broker (same port, users and persisted retained state)."""
        self.mosquitto.stop()
        self._launch()

    def url(self, user: str, host: str | None = None, port: int | None = None, tls: bool = False) -> str:
        """``user``'s URL; with ``tls``, of the TLS listener."""
        if tls:
            if self.tls is None:
                raise EdgeCIError("this broker has no TLS listener")
            return f"mqtts://{user}:{self.credentials.passwords[user]}@{host or self.bind}:{port or self.tls.port}"
        return f"mqtt://{user}:{self.credentials.passwords[user]}@{host or self.bind}:{port or self.port}"

    def address(self, user: str) -> BrokerAddress:
        return BrokerAddress.parse(self.url(user))

    def admin(self) -> AbstractContextManager[DynsecAdmin]:
        """A Dynamic Security session as the admin, for a ``with`` block."""
        return administer(MqttBus(self.address(ADMIN_USER)))

    def add_user(self, role: Role, name: str) -> BrokerAddress:
        """A new user while the broker runs (as ``edgeci provision add`` does); its address."""
        with self.admin() as admin:
            self.credentials.passwords[name] = admin.add_user(role, name)
        return self.address(name)

    def stop(self) -> None:
        self.mosquitto.stop()
        self._log.close()


def without_passwords(command: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``command`` with the password taken out of its ``--broker`` URL, and the environment
    that gives the login instead (``edgeci`` reads ``EDGECI_USERNAME``/``EDGECI_PASSWORD``
    when the URL has no password and no ``--credentials`` is given)."""
    out, env = list(command), dict[str, str]()
    for i, arg in enumerate(out):
        inline = arg.startswith("--broker=")
        if not inline and not (i > 0 and out[i - 1] == "--broker"):
            continue
        address = BrokerAddress.parse(arg.removeprefix("--broker="))
        if not address.password:
            continue
        login = {"EDGECI_USERNAME": str(address.username), "EDGECI_PASSWORD": address.password}
        if env and env != login:
            raise EdgeCIError("one process with two broker logins: give each --broker once")
        env = login
        user = quote(str(address.username), safe="")
        bare = f"{'mqtts' if address.tls else 'mqtt'}://{user}@{address.host}:{address.port}"
        out[i] = f"--broker={bare}" if inline else bare
    return out, env


class ProcessGroup:
    """Child ``edgeci`` processes, each logging to its own file, all stopped together."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, *args: str, threads: int = 1, wrap: Callable[[list[str]], list[str]] | None = None
    ) -> subprocess.Popen[bytes]:
        """``python -m edgeci_mqtt ARGS`` (or ``wrap`` of it: in a namespace and cgroup)."""
        return self.start_command(name, [sys.executable, "-m", "edgeci_mqtt", *args], threads, wrap)

    def start_command(
        self, name: str, command: list[str], threads: int = 1, wrap: Callable[[list[str]], list[str]] | None = None
    ) -> subprocess.Popen[bytes]:
        command, login = without_passwords(command)
        log = (self.logdir / f"{name}.log").open("wb")
        self._logs.append(log)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        env.update(login)
        process = subprocess.Popen(wrap(command) if wrap else command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.processes[name] = process
        return process

    def wait_for_log(self, name: str, text: str, timeout: float = 120.0) -> None:
        """Block until process ``name`` logs ``text`` (fail fast if it exits)."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text(name):
            if self.processes[name].poll() is not None:
                raise EdgeCIError(f"{name} exited: {self.log_text(name)[-800:]}")
            if time.monotonic() > deadline:
                raise EdgeCIError(f"{name} did not log {text!r} within {timeout:.0f} s")
            time.sleep(0.1)

    def log_text(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        for key in [name] if name else list(self.processes):
            process = self.processes[key]
            if process.poll() is None:
                process.send_signal(sig)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def close(self) -> None:
        self.stop()
        for log in self._logs:
            log.close()
