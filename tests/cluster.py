"""A real local cluster for integration tests: Mosquitto plus agent and orchestrator processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeci_mqtt.broker.config import TlsListener
from edgeci_mqtt.broker.launch import BrokerProcess, ProcessGroup
from edgeci_mqtt.bus.protocol import Bus, Inbound, events_until
from edgeci_mqtt.cli.demo_cmd import wait_for_devices


class LocalCluster:
    def __init__(
        self, broker: BrokerProcess, group: ProcessGroup, devices: list[str], orchestrators: list[str]
    ) -> None:
        self.broker, self.group, self.devices, self.orchestrators = broker, group, devices, orchestrators

    def logs(self) -> str:
        return "\n".join(f"== {name}\n{self.group.log_text(name)}" for name in self.group.processes)


@contextmanager
def local_cluster(
    workdir: Path,
    devices: int,
    models: str,
    orchestrators: int = 1,
    strategy: str = "edgeci",
    start: int | None = None,
    device_args: tuple[str, ...] = (),
    orchestrator_args: tuple[str, ...] = (),
    tls: TlsListener | None = None,
    tls_args: tuple[str, ...] = (),
) -> Iterator[LocalCluster]:
    """Credentials for ``devices`` devices; the first ``start`` (default all) are started.
    With ``tls`` the devices and orchestrators connect to its listener, with ``tls_args``
    (``--ca-file`` ...)."""
    names = [f"dev-{i}" for i in range(1, devices + 1)]
    oids = [f"o{i}" for i in range(1, orchestrators + 1)]
    broker = BrokerProcess(workdir / "broker", names, orchestrators=oids, tls=tls)
    device_args = (*device_args, *tls_args)
    group = ProcessGroup(workdir)
    names = names[:start]
    try:
        for name in names:
            start_device(group, broker, name, models, *device_args)
        for oid in oids:
            group.start(
                oid,
                "orchestrator",
                "--broker",
                broker.url(oid, tls=tls is not None),
                "--strategy",
                strategy,
                *(a for m in models.split(",") for a in ("--model", m)),
                *orchestrator_args,
                *tls_args,
            )
        wait_for_devices(broker, set(names), timeout=180, group=group)
        for oid in oids:
            group.wait_for_log(oid, "ready")
        time.sleep(0.5)  # subscriptions settle; orchestrators read the retained births
        yield LocalCluster(broker, group, names, oids)
    finally:
        group.close()
        broker.stop()


def start_device(group: ProcessGroup, broker: BrokerProcess, name: str, models: str, *extra: str) -> None:
    url = broker.url(name, tls="--ca-file" in extra)
    group.start(name, "-v", "device", "--broker", url, "--models", models, *extra)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout:.0f} s"
        time.sleep(0.01)


def collect(bus: Bus, seconds: float) -> list[Inbound]:
    """Messages that reach ``bus`` within ``seconds``."""
    deadline = time.perf_counter() + seconds
    return [e for e in events_until(bus, deadline=deadline, poll_s=0.1) if isinstance(e, Inbound)]
