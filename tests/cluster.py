"""A real local cluster for integration tests: Mosquitto plus agent and orchestrator processes."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from paho.mqtt.client import topic_matches_sub

from edgeci_mqtt.broker.config import TlsListener
from edgeci_mqtt.broker.dynsec import ADMIN_USER
from edgeci_mqtt.broker.launch import BrokerProcess, ProcessGroup
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.bus.protocol import Bus, Inbound, events_until
from edgeci_mqtt.cli.demo_cmd import wait_for_devices

TABLE_LINE = re.compile(r"device (?P<device>\S+) is (?P<state>online|offline) \(generation \d+\)")
"""What an orchestrator logs when a device enters or leaves its table (from the states it reads)."""


class LocalCluster:
    def __init__(
        self, broker: BrokerProcess, group: ProcessGroup, devices: list[str], orchestrators: list[str]
    ) -> None:
        self.broker, self.group, self.devices, self.orchestrators = broker, group, devices, orchestrators

    def logs(self) -> str:
        return "\n".join(f"== {name}\n{self.group.log_text(name)}" for name in self.group.processes)

    def table(self, orchestrator: str) -> set[str]:
        """The devices online in ``orchestrator``'s table, as its log tells (an orchestrator is
        a process: its log is what shows). Fails at once if it exited."""
        process = self.group.processes[orchestrator]
        assert process.poll() is None, f"{orchestrator} exited: {self.group.log_text(orchestrator)[-800:]}"
        states = {found["device"]: found["state"] for found in TABLE_LINE.finditer(self.group.log_text(orchestrator))}
        return {device for device, state in states.items() if state == "online"}  # the last word on each

    def wait_for_tables(self, online: set[str], timeout: float = 60.0) -> None:
        """Until every orchestrator has exactly ``online`` in its table: it has read their births
        (and the wills or goodbyes of the others), so the next plan it makes counts on them."""
        wait_for(
            lambda: all(self.table(oid) == online for oid in self.orchestrators),
            timeout,
            f"every orchestrator's table holding exactly {sorted(online)}",
        )


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
            group.wait_for_log(oid, "ready")  # subscribed: an orchestrator awaits its SUBACKs first
        cluster = LocalCluster(broker, group, names, oids)
        cluster.wait_for_tables(set(names))  # the orchestrators read the retained births
        yield cluster
    finally:
        group.close()
        broker.stop()


def start_device(group: ProcessGroup, broker: BrokerProcess, name: str, models: str, *extra: str) -> None:
    url = broker.url(name, tls="--ca-file" in extra)
    group.start(name, "-v", "device", "--broker", url, "--models", models, *extra)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str | Callable[[], str] = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, saying ``what`` (or
    what it returns then: what is still missing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what() if callable(what) else what} not met within {timeout:.0f} s"
        time.sleep(0.01)


@contextmanager
def on_traffic(
    broker: BrokerProcess, steps: Sequence[tuple[str, Callable[[], object]]], timeout: float = 60.0
) -> Iterator[list[str]]:
    """While the block runs, each step's action runs in turn as soon as the broker carries a
    message on a topic its filter matches (after the step before ran): a kill or a freeze
    timed by the traffic itself, not by a clock. Read as the admin (work and requests carry
    client data, which no other role may read). Yields the filters of the steps done."""
    spy = MqttBus(broker.address(ADMIN_USER))
    for topic_filter in dict.fromkeys(f for f, _ in steps):
        spy.subscribe(topic_filter)
    spy.start()
    assert spy.wait_subscribed(10), "the broker did not answer the spy's subscriptions"
    done: list[str] = []
    stop = threading.Event()

    def follow() -> None:
        todo = list(steps)
        for event in events_until(spy, stop, deadline=time.perf_counter() + timeout, poll_s=0.01):
            if isinstance(event, Inbound) and topic_matches_sub(todo[0][0], event.topic):
                topic_filter, action = todo.pop(0)
                action()
                done.append(topic_filter)
                if not todo:
                    return

    following = threading.Thread(target=follow, name="on-traffic", daemon=True)
    following.start()
    try:
        yield done
    finally:
        stop.set()
        following.join()
        spy.stop()


def collect(bus: Bus, seconds: float) -> list[Inbound]:
    """Messages that reach ``bus`` within ``seconds``."""
    deadline = time.perf_counter() + seconds
    return [e for e in events_until(bus, deadline=deadline, poll_s=0.1) if isinstance(e, Inbound)]


def collect_until(
    bus: Bus, done: Callable[[list[Inbound]], bool], timeout: float = 10.0, what: str = "the messages awaited"
) -> list[Inbound]:
    """Messages that reach ``bus`` until ``done`` holds of them; fail after ``timeout`` seconds.
    The broker forwards one session's publishes in order, so a message published last by it
    marks the end of the ones before: what did not come before it did not get through."""
    got: list[Inbound] = []
    for event in events_until(bus, deadline=time.perf_counter() + timeout, poll_s=0.05):
        if isinstance(event, Inbound):
            got.append(event)
            if done(got):
                return got
    raise AssertionError(f"{what} not seen within {timeout:.0f} s")
