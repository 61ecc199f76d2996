"""Roles as the real broker enforces them (Mosquitto + Dynamic Security), judged by delivery.

Every case is something a holder of one credential tries: publish where it may not, read
what it may not, log in under another id, run twice, or outlive its removal. Only the
broker runs here (no agents): what it delivers is what the roles allow.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeci_mqtt.broker.config import Credentials
from edgeci_mqtt.broker.dynsec import ADMIN_USER, CONTROL_TOPIC, administer
from edgeci_mqtt.broker.launch import BrokerProcess
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.bus.protocol import Inbound, events_until
from edgeci_mqtt.errors import TransportError
from edgeci_mqtt.wire import (
    AUCTION_AWARD,
    AUCTION_BIDS,
    AUCTION_CALL,
    CLIENT_RESPONSES,
    DEVICE_PROBE,
    DEVICE_ROWS,
    DEVICE_STATE,
    DEVICE_TASKS,
    INFER_REQUESTS,
    RESULTS,
    SHARED_REQUESTS,
)
from edgeci_mqtt.wire.topics import DEVICE_TRAFFIC, ORCHESTRATOR_TRAFFIC, TOPICS, WATCHER_STATE
from tests.cluster import collect, collect_until, wait_for

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    running = BrokerProcess(
        tmp_path_factory.mktemp("roles"),
        ["dev-1", "dev-2", "dev-3"],
        orchestrators=["o1"],
        clients=["alice", "bob"],
        watchers=["watcher"],
    )
    try:
        yield running
    finally:
        running.stop()


def session(broker: BrokerProcess, user: str, *filters: str) -> MqttBus:
    bus = MqttBus(broker.address(user))
    for topic_filter in filters:
        bus.subscribe(topic_filter)
    bus.start()
    assert bus.wait_subscribed(10), f"{user}: the broker did not answer its subscriptions"  # granted or refused
    return bus


def test_every_role_writes_and_reads_only_what_it_is_granted(broker: BrokerProcess) -> None:
    """Each credential publishes where it may and where it may not; a sink that reads
    everything (the admin) shows what the broker let through. Then readers subscribe to
    what they may not read, and the legitimate writers publish there."""
    sink = session(broker, ADMIN_USER, "edgeci/#")
    allowed = {
        "alice": [INFER_REQUESTS.build(client="alice")],
        "dev-1": [
            DEVICE_PROBE.build(device="dev-1"),
            AUCTION_BIDS.build(round="r", device="dev-1"),
            RESULTS.build(orchestrator="o1", device="dev-1", request="r"),
        ],
        "o1": [CLIENT_RESPONSES.build(client="alice"), DEVICE_TASKS.build(device="dev-1")],
    }
    refused = {
        "alice": [  # a client posing as a device, an orchestrator or another client
            DEVICE_STATE.build(device="alice"),
            AUCTION_BIDS.build(round="r", device="alice"),
            DEVICE_ROWS.build(device="dev-1", sender="alice", request="r"),
            RESULTS.build(orchestrator="o1", device="dev-1", request="hostile"),
            DEVICE_TASKS.build(device="dev-1"),
            AUCTION_CALL.build(round="r"),
            AUCTION_AWARD.build(round="r"),
            INFER_REQUESTS.build(client="bob"),
            CLIENT_RESPONSES.build(client="bob"),
        ],
        "watcher": [INFER_REQUESTS.build(client="watcher"), DEVICE_STATE.build(device="watcher"), "anything"],
        "dev-1": [
            DEVICE_STATE.build(device="dev-2"),
            AUCTION_BIDS.build(round="r", device="dev-2"),
            DEVICE_ROWS.build(device="dev-2", sender="dev-3", request="r"),
            AUCTION_AWARD.build(round="r"),
            CLIENT_RESPONSES.build(client="alice"),
            INFER_REQUESTS.build(client="dev-1"),
            RESULTS.build(orchestrator="o1", device="dev-2", request="r"),  # results posing as another device
        ],
    }
    try:
        for user in {*allowed, *refused}:
            bus = session(broker, user)
            try:
                for topic in allowed.get(user, []) + refused.get(user, []):
                    bus.publish(topic, f"from {user}".encode(), wait=5)
            finally:
                bus.stop()
        # The broker routes a publish before it acknowledges it: a message published after them
        # all reaches the sink after them, and what did not come before it was not let through.
        end = session(broker, "alice")
        try:
            end.publish(INFER_REQUESTS.build(client="alice"), b"the end", wait=5)
        finally:
            end.stop()
        got = collect_until(sink, lambda got: got[-1].payload == b"the end", what="the last message")
        delivered = {(m.topic, m.payload.decode(errors="replace")) for m in got}  # (retained states too)
    finally:
        sink.stop()
    for user, topics in allowed.items():
        assert {(t, f"from {user}") for t in topics} <= delivered, user
    for user, topics in refused.items():
        assert not {(t, f"from {user}") for t in topics} & delivered, user


def test_no_one_reads_another_ones_data_or_joins_the_orchestrators(broker: BrokerProcess) -> None:
    readers = {
        "alice": [
            CLIENT_RESPONSES.build(client="bob"),
            CLIENT_RESPONSES.filter,
            INFER_REQUESTS.filter,
        ],
        "bob": [SHARED_REQUESTS],
        "watcher": ["#", SHARED_REQUESTS, f"{CONTROL_TOPIC}/#", "$CONTROL/#"],
        "dev-1": [DEVICE_TASKS.build(device="dev-2"), DEVICE_ROWS.filter, SHARED_REQUESTS, CLIENT_RESPONSES.filter],
        "o1": [SHARED_REQUESTS],  # the control: the orchestrators do get the requests
    }
    sessions = {user: session(broker, user, *filters) for user, filters in readers.items()}
    bob, o1, dev1 = sessions["bob"], sessions["o1"], sessions["dev-1"]  # one session per user
    try:
        bob.publish(INFER_REQUESTS.build(client="bob"), b"bob's image", wait=5)
        o1.publish(CLIENT_RESPONSES.build(client="bob"), b"bob's answer", wait=5)
        o1.publish(DEVICE_TASKS.build(device="dev-2"), b"dev-2's program", wait=5)
        dev1.publish(DEVICE_ROWS.build(device="dev-2", sender="dev-1", request="r"), b"dev-2's rows", wait=5)
        dev1.publish(RESULTS.build(orchestrator="o1", device="dev-1", request="r"), b"o1's result", wait=5)
        dev1.publish(DEVICE_PROBE.build(device="dev-1"), b"a device topic", wait=5)
        broker.add_user("device", "dev-new")  # an admin command on $CONTROL carries a password
        got = {user: {m.payload for m in collect(bus, 1.0)} for user, bus in sessions.items()}
    finally:
        for bus in sessions.values():
            bus.stop()
    assert got["o1"] == {b"bob's image"}
    assert got["alice"] == got["bob"] == set()  # nor its own request through the orchestrators' share
    assert got["watcher"] == {b"a device topic"}  # no client data: no task, program, rows or result
    password = broker.credentials.passwords["dev-new"].encode()
    assert not any(password in payload for payloads in got.values() for payload in payloads)
    assert got["dev-1"] == set()


def test_a_client_id_is_bound_to_its_user(broker: BrokerProcess) -> None:
    """Logging in under another id is refused at once (no retry loop, no waiting out the timeout)."""
    started = time.perf_counter()
    with pytest.raises(TransportError, match=r"refused.*[Nn]ot authori[sz]ed"):
        MqttBus(broker.address("alice"), "dev-1").start(timeout=20)
    assert time.perf_counter() - started < 5


def test_a_second_process_with_the_same_credential_gets_a_clear_error_not_a_takeover_loop(
    broker: BrokerProcess,
) -> None:
    first = session(broker, "bob")  # connected once start() returns
    second = session(broker, "bob")
    ended: list[tuple[MqttBus, str]] = []
    try:
        deadline = time.perf_counter() + 20
        while not ended and time.perf_counter() < deadline:
            for bus in (first, second):
                try:
                    for _ in events_until(bus, deadline=time.perf_counter() + 0.1):
                        pass
                except TransportError as exc:
                    ended.append((bus, str(exc)))
        assert len(ended) == 1 and "credential of its own" in ended[0][1]
        left = second if ended[0][0] is first else first
        wait_for(left.connected.is_set, 10, "the session left connected")
        takeovers = broker.log_path.read_text().count("Client bob already connected")
        # A negative check: the one left is not kicked again, the loop is over. Were it not, the
        # ended one would log in again within paho's reconnect delay (1 s after a session that
        # got its CONNACK): twice that shows it.
        time.sleep(2.0)
        assert first.connected.is_set() != second.connected.is_set()
        assert broker.log_path.read_text().count("Client bob already connected") == takeovers <= 6
    finally:
        first.stop()
        second.stop()


def _edgeci(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeci_mqtt", *args], capture_output=True, text=True, timeout=60)


def test_provision_adds_and_removes_a_device_while_the_broker_runs(broker: BrokerProcess, tmp_path: Path) -> None:
    admin_file = broker.workdir / "credentials" / f"{ADMIN_USER}.yaml"
    admin = ("--broker", f"mqtt://127.0.0.1:{broker.port}", "--credentials", str(admin_file))
    out = tmp_path / "creds"
    added = _edgeci("provision", *admin, "add", "dev-5", "--out", str(out))
    assert added.returncode == 0, added.stderr
    creds = out / "dev-5.yaml"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    password = Credentials.load(creds).passwords["dev-5"]
    again = _edgeci("provision", *admin, "add", "dev-5", "--out", str(out))
    assert again.returncode != 0 and "exists" in again.stderr  # no silent replacement
    assert Credentials.load(creds).passwords["dev-5"] == password
    listed = _edgeci("provision", *admin, "list")
    assert "dev-5" in listed.stdout and "device" in listed.stdout and "alice" in listed.stdout
    device = MqttBus(broker.address(ADMIN_USER).with_login("dev-5", password))
    sink = session(broker, ADMIN_USER, "edgeci/#")
    device.start()
    try:
        seen, deadline = False, time.perf_counter() + 10
        while not seen and time.perf_counter() < deadline:  # again until the sink's subscription has taken hold
            device.publish(DEVICE_PROBE.build(device="dev-5"), b"new device", wait=5)
            arrived = events_until(sink, deadline=time.perf_counter() + 0.5, poll_s=0.1)
            seen = any(isinstance(m, Inbound) and m.payload == b"new device" for m in arrived)
        assert seen
        removed = _edgeci("provision", *admin, "remove", "dev-5")
        assert removed.returncode == 0 and "removed device dev-5" in removed.stdout, removed.stderr
        with pytest.raises(TransportError, match=r"[Nn]ot authori[sz]ed"):  # kicked, and not let back in
            for _ in events_until(device, deadline=time.perf_counter() + 15):
                pass
    finally:
        device.stop()
        sink.stop()
    assert "dev-5" not in _edgeci("provision", *admin, "list").stdout


def test_the_plugin_file_holds_no_password(broker: BrokerProcess) -> None:
    text = (broker.workdir / "dynamic-security.json").read_text()
    json.loads(text)
    assert not any(password in text for password in broker.credentials.passwords.values())


def test_the_admin_is_bound_to_its_client_id(broker: BrokerProcess) -> None:
    """As every other user: the admin's credential cannot log in under another id."""
    with pytest.raises(TransportError, match=r"refused.*[Nn]ot authori[sz]ed"):
        MqttBus(broker.address(ADMIN_USER), "someone-else").start(timeout=20)
    with administer(MqttBus(broker.address(ADMIN_USER))) as admin:  # under its own id it administers
        assert "dev-1" in admin.users()


def test_a_session_that_needs_its_role_fails_at_start_naming_what_the_broker_refused(broker: BrokerProcess) -> None:
    """A client's credential used as a device: Mosquitto answers the subscription 0x87 and keeps
    the session; with ``require_subscriptions`` starting fails instead of running deaf."""
    bus = MqttBus(broker.address("alice"), require_subscriptions=True)
    bus.subscribe(DEVICE_TASKS.build(device="alice"))
    bus.subscribe(CLIENT_RESPONSES.build(client="alice"))  # its own: granted
    with pytest.raises(TransportError, match=r"refused the subscription.*devices/alice/tasks \(Not authori[sz]ed\)"):
        bus.start(timeout=20)
    assert list(bus.refused) == [DEVICE_TASKS.build(device="alice")]
    fine = MqttBus(broker.address("dev-1"), require_subscriptions=True)
    fine.subscribe(DEVICE_TASKS.build(device="dev-1"))
    fine.start(timeout=20)
    fine.stop()
    assert fine.refused == {}


def test_the_watcher_reads_metadata_and_reports_but_no_client_data(broker: BrokerProcess) -> None:
    """Every data topic is closed to the watcher (whatever its filter), its reports and the
    metadata topics are open; a watcher announces only itself, which devices and
    orchestrators read, and a device or orchestrator reports only under its own name."""
    data = [
        ("o1", DEVICE_TASKS.build(device="dev-1")),
        ("dev-1", DEVICE_ROWS.build(device="dev-2", sender="dev-1", request="r")),
        ("dev-1", RESULTS.build(orchestrator="o1", device="dev-1", request="r")),
        ("alice", INFER_REQUESTS.build(client="alice")),
        ("o1", CLIENT_RESPONSES.build(client="alice")),
    ]
    metadata = [
        ("dev-1", DEVICE_TRAFFIC.build(device="dev-1")),
        ("o1", ORCHESTRATOR_TRAFFIC.build(orchestrator="o1")),
        ("dev-1", DEVICE_STATE.build(device="dev-1")),
        ("o1", AUCTION_CALL.build(round="r")),
    ]
    forged = [
        ("dev-1", DEVICE_TRAFFIC.build(device="dev-2")),
        ("o1", DEVICE_TRAFFIC.build(device="dev-1")),
        ("dev-1", ORCHESTRATOR_TRAFFIC.build(orchestrator="o1")),
        ("dev-1", WATCHER_STATE.build(watcher="dev-1")),
    ]
    own_state = WATCHER_STATE.build(watcher="watcher")
    filters = ["#", *(p.filter for p in TOPICS), *(topic for _, topic in data)]
    watcher, sink = session(broker, "watcher", *filters), session(broker, ADMIN_USER, "edgeci/#")
    users = {user: session(broker, user, WATCHER_STATE.filter) for user in ("dev-1", "dev-2", "o1", "alice")}
    readers = {user: users[user] for user in ("dev-2", "o1")}  # (alice's filter is refused, dev-1's collected)
    end = AUCTION_CALL.build(round="the-end")  # metadata, published last: the watcher and the sink read it
    try:
        for user, topic in data + metadata + forged:
            users[user].publish(topic, f"{user} on {topic}".encode(), wait=5)
        watcher.publish(WATCHER_STATE.build(watcher="dev-1"), b"posing as another watcher", wait=5)
        watcher.publish(own_state, b"watcher online", wait=5)  # the last that devices and orchestrators read
        users["o1"].publish(end, b"the end", wait=5)
        # The broker routes a publish before it acknowledges it: what did not reach a reader
        # before the last message it may read was not let through.
        seen = {m.topic: m.payload for m in collect_until(watcher, lambda got: got[-1].topic == end)}
        delivered = {(m.topic, m.payload) for m in collect_until(sink, lambda got: got[-1].topic == end)}
        announced = {
            user: {m.payload for m in collect_until(bus, lambda got: got[-1].payload == b"watcher online")}
            for user, bus in readers.items()
        }
    finally:
        for bus in (watcher, sink, *users.values()):
            bus.stop()
    assert not {topic for _, topic in data} & set(seen), "the watcher read client data"
    assert {topic for _, topic in metadata} <= set(seen)
    assert not {(topic, f"{user} on {topic}".encode()) for user, topic in forged} & delivered
    assert WATCHER_STATE.build(watcher="dev-1") not in {topic for topic, _ in delivered}
    assert announced == {"dev-2": {b"watcher online"}, "o1": {b"watcher online"}}
