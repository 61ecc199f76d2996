"""Removing a user revokes it at once: the broker does not deliver a deleted user's will,
so ``edgeci provision remove`` marks its retained state offline itself, and every
orchestrator, running or started later, stops offering it work."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeci_mqtt.broker.dynsec import ADMIN_USER
from edgeci_mqtt.broker.launch import BrokerProcess
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.service import Orchestrator
from edgeci_mqtt.watch.view import device_states
from edgeci_mqtt.wire import DEVICE_STATE, DeviceStateMessage, encode
from tests.cluster import wait_for
from tests.planning import flat_profile

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    running = BrokerProcess(tmp_path_factory.mktemp("revoke"), ["dev-6", "dev-7"], orchestrators=["o1", "o2"])
    try:
        yield running
    finally:
        running.stop()


def test_a_removed_device_leaves_every_orchestrators_table_at_once(broker: BrokerProcess) -> None:
    store = ModelStore({"smallcnn": None}, seed=0)
    orchestrator = Orchestrator("o1", MqttBus(broker.address("o1")), store, flat_profile())
    stop = threading.Event()
    running = threading.Thread(target=orchestrator.run, args=(stop,), daemon=True)
    running.start()
    devices = {name: MqttBus(broker.address(name)) for name in ("dev-6", "dev-7")}
    try:
        for name, bus in devices.items():  # announced online, as a device agent does
            bus.will(DEVICE_STATE.build(device=name), encode(DeviceStateMessage(name, False)))
            bus.start()
            online = DeviceStateMessage(name, True, profile=flat_profile(), link=Link(100.0, 1.0), models=store.digests)
            bus.publish(DEVICE_STATE.build(device=name), encode(online), retain=True, wait=5)
        wait_for(lambda: set(orchestrator.table.online()) == {"dev-6", "dev-7"})
        admin = broker.workdir / "credentials" / f"{ADMIN_USER}.yaml"
        login = ("--broker", f"mqtt://127.0.0.1:{broker.port}", "--credentials", str(admin))
        removed = subprocess.run(
            [sys.executable, "-m", "edgeci_mqtt", "provision", "remove", "dev-6", *login],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).parent.parent,
        )
        assert removed.returncode == 0, removed.stderr
        wait_for(lambda: orchestrator.table.online() == ["dev-7"], timeout=5.0)  # no auction needed to find out
        later = MqttBus(broker.address("o2"))  # an orchestrator started after the removal
        seen = device_states(later, lambda states: "dev-7" in states, timeout=10.0)
        assert set(seen) == {"dev-7"}
    finally:
        for bus in devices.values():
            bus.stop()
        stop.set()
        running.join(timeout=10)
