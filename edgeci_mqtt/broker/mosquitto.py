"""Finding and running the Mosquitto binary and its Dynamic Security plugin.

Shared by the project's private brokers (:mod:`launch`) and by the short-lived broker
that :mod:`broker_config` starts to create users (the plugin hashes passwords itself,
and only through a running broker).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from edgeci_mqtt.errors import EdgeCIError

__all__ = ["DOCKER_PLUGIN", "MosquittoProcess", "dynsec_plugin", "free_port", "mosquitto_binary"]

DOCKER_PLUGIN = "/usr/lib/mosquitto_dynamic_security.so"
"""Where the eclipse-mosquitto image keeps the plugin."""

_INSTALL = "Debian: apt-get install mosquitto mosquitto-clients"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_binary(name: str = "mosquitto") -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}",) if os.path.exists(p)), None)
    if found is None:
        raise EdgeCIError(f"{name} is not installed ({_INSTALL})")
    return found


def dynsec_plugin() -> str:
    """This host's ``mosquitto_dynamic_security.so`` (Debian keeps it under the multiarch lib dir)."""
    patterns = (
        "/usr/lib/*/mosquitto_dynamic_security.so",
        DOCKER_PLUGIN,
        "/usr/local/lib/mosquitto_dynamic_security.so",
    )
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise EdgeCIError(f"Mosquitto's Dynamic Security plugin is not installed ({_INSTALL})")


class MosquittoProcess:
    """``mosquitto -c config``, started and ready (listening on ``host:port``) or an error."""

    def __init__(
        self, config: Path, log: IO[bytes], host: str, port: int, wrap: Callable[[list[str]], list[str]] | None = None
    ) -> None:
        """``wrap`` runs the broker elsewhere (a network namespace); readiness is then probed from there too."""
        self.config, self.log, self.host, self.port, self.wrap = config, log, host, port, wrap
        command = [mosquitto_binary(), "-c", str(config)]
        self.process = subprocess.Popen(wrap(command) if wrap else command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EdgeCIError(f"mosquitto exited (code {self.process.returncode}); see its log {log.name}")
            if self._listening():
                return
            time.sleep(0.05)
        self.stop()
        raise EdgeCIError("mosquitto did not start listening within 10 s")

    def _listening(self) -> bool:
        if self.wrap is None:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return True
            except OSError:
                return False
        probe = [sys.executable, "-c", f"import socket; socket.create_connection(({self.host!r}, {self.port}), 0.2)"]
        return subprocess.run(self.wrap(probe), capture_output=True).returncode == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
