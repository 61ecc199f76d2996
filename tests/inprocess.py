"""A whole cluster in this process: device agents and an orchestrator on a MemoryBroker.

The roles run their real code (threads, queues, wire encoding, auctions, recovery);
only the broker is in memory, so the roles' decisions are tested fast and without
Mosquitto. Profiles are injected (flat, deterministic), nothing is measured.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from edgeci_mqtt.bus.memory import MemoryBroker, MemoryBus
from edgeci_mqtt.client import EdgeCIClient
from edgeci_mqtt.core.link import Medium
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.device.agent import DeviceAgent
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.service import Orchestrator
from edgeci_mqtt.planner.strategy import Strategy
from edgeci_mqtt.wire import AUCTION_BIDS
from tests.cluster import wait_for
from tests.planning import flat_profile

DEVICE_GFLOPS = 5.0
"""Devices announce about a small board's speed (whatever this host's real speed): slow
enough that ``flow`` splits the small test images rather than running them whole."""


@dataclass
class MemoryCluster:
    broker: MemoryBroker
    store: ModelStore
    agents: dict[str, DeviceAgent]
    orchestrator: Orchestrator
    muted: set[str]
    """Client ids whose publishes the broker drops (a frozen device: connected, silent)."""
    dropped: list[tuple[str, str]]
    """The client id and topic of each publish dropped so."""
    stops: dict[str, threading.Event] = field(default_factory=dict)
    threads: dict[str, threading.Thread] = field(default_factory=dict)

    def client(self, client_id: str = "test-client") -> EdgeCIClient:
        return EdgeCIClient(self.broker.bus(client_id))

    def start(self, name: str, runnable: DeviceAgent | Orchestrator) -> None:
        self.stops[name] = threading.Event()
        self.threads[name] = threading.Thread(target=runnable.run, args=(self.stops[name],), name=name, daemon=True)
        self.threads[name].start()

    def add_device(
        self,
        name: str,
        profile: DeviceProfile | None = None,
        calibrate: bool = False,
        store: ModelStore | None = None,
        tail_memory_bytes: int | None = None,
        medium: Medium | None = None,
    ) -> DeviceAgent:
        bus = self.broker.bus(f"edgeci-device-{name}")
        agent = DeviceAgent(
            name,
            bus,
            store or self.store,
            profile or flat_profile(DEVICE_GFLOPS),
            calibrate=calibrate,
            tail_memory_bytes=tail_memory_bytes,
            medium=medium,
        )
        self.agents[name] = agent
        self.start(name, agent)
        return agent

    def bus_of(self, name: str) -> MemoryBus:
        bus = self.agents[name].bus
        assert isinstance(bus, MemoryBus)
        return bus

    def wait_for_table(self, names: set[str], timeout: float = 10.0) -> None:
        wait_for(
            lambda: set(self.orchestrator.table.online()) == names, timeout, f"the orchestrator seeing {sorted(names)}"
        )

    def bids_dropped(self, name: str) -> int:
        """How many bids of device ``name`` the broker dropped (while it was muted)."""
        client = self.bus_of(name).client_id
        return sum(1 for who, topic in self.dropped if who == client and AUCTION_BIDS.parse(topic) is not None)

    def alive(self) -> list[str]:
        return [name for name, thread in self.threads.items() if thread.is_alive()]

    def stop(self) -> None:
        for event in self.stops.values():
            event.set()
        for thread in self.threads.values():
            thread.join(timeout=10)


@contextmanager
def memory_cluster(
    store: ModelStore,
    devices: int = 3,
    strategy: str = "edgeci",
    auction_s: float = 0.5,
    min_allowance_s: float = 3.0,
    in_flight: int = 4,
    per_client: int = 16,
    orchestrator_profile: DeviceProfile | None = None,
) -> Iterator[MemoryCluster]:
    muted: set[str] = set()
    dropped: list[tuple[str, str]] = []

    def acl(client: str, access: str, topic: str) -> bool:
        if access == "read" or client not in muted:
            return True
        dropped.append((client, topic))
        return False

    broker = MemoryBroker(acl=acl)
    orchestrator = Orchestrator(
        "o1",
        broker.bus("edgeci-orchestrator-o1"),
        store,
        orchestrator_profile or flat_profile(),
        Strategy.parse(strategy),
        auction_s=auction_s,
        min_allowance_s=min_allowance_s,
        in_flight=in_flight,
        per_client=per_client,
    )
    # as devices hold them: no tail until given
    devices_store = ModelStore(store.models, store.seed, tail=False, size=store.size, files=store.files)
    cluster = MemoryCluster(broker, devices_store, {}, orchestrator, muted, dropped)
    try:
        for i in range(1, devices + 1):
            cluster.add_device(f"dev-{i}")
        cluster.start("o1", orchestrator)
        cluster.wait_for_table(set(cluster.agents))
        yield cluster
    finally:
        cluster.stop()
