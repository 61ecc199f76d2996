"""Reliability under hostile and failing conditions, on loopback: one command, bounded.

    python -m bench.reliability [--sequential 1000] [--clients 50] [--each 10] [--malformed 10000]

Starts Mosquitto (the generated configuration: Dynamic Security roles), 4 device agents
and 2 orchestrators serving ``smallcnn`` at 64x64 (what is measured is the runtime's
behaviour, not model speed), then runs each scenario in turn: the role matrix by delivery,
malformed payloads on every subscribed topic, sequential and concurrent requests, device
kills, broker restarts (SIGTERM and SIGKILL), an orchestrator killed with requests running,
the floods, malformed requests, a watcher during requests, a device removed, frozen, or
bidding and never computing; then each role's memory serving VGG-16 and ResNet-34, and a
device's under a rows flood from another device's credential. Writes docs/RELIABILITY.md
and docs/bench/reliability.json.

Columns: *attempted*; *refused* (turned away as intended: by the broker, as busy, or as
malformed); *crashed* (processes that died); *hung* (requests that waited out the client's
timeout); *wrong* (answers not faithful to the model, or a delivery the roles forbid);
*lost* (requests that ended with a clear error although an answer was possible).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import msgpack
import torch

from bench.report import DOCS, machine_line, resident_mb, sampled_rss
from edgeci_mqtt.broker.dynsec import ADMIN_USER
from edgeci_mqtt.broker.launch import BrokerProcess, ProcessGroup
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.bus.protocol import Inbound, events_until
from edgeci_mqtt.client import EdgeCIClient
from edgeci_mqtt.errors import EdgeCIError, InferenceError
from edgeci_mqtt.exactness import faithful, float64_model
from edgeci_mqtt.models import load_chain
from edgeci_mqtt.orchestrator.penalties import FIRST_HOLD_S
from edgeci_mqtt.watch.view import device_states
from edgeci_mqtt.wire import (
    AUCTION_BIDS,
    AUCTION_CALL,
    CLIENT_RESPONSES,
    DEVICE_PROBE,
    DEVICE_ROWS,
    DEVICE_STATE,
    DEVICE_TASKS,
    DEVICE_TRAFFIC,
    INFER_REQUESTS,
    ORCHESTRATOR_TRAFFIC,
    RESULTS,
    SHARED_REQUESTS,
    WATCHER_STATE,
    BidMessage,
    CallMessage,
    DeviceStateMessage,
    LotPrices,
    ResponseMessage,
    WatcherStateMessage,
    decode,
    encode,
)
from edgeci_mqtt.wire.topics import TOPICS, Role
from tests.cluster import collect
from tests.hostile import forged_results_flood, hostile_payloads, rows_flood

DEVICES = ("dev-1", "dev-2", "dev-3", "dev-4")
ORCHESTRATORS = ("o1", "o2")
SIDE = 64
FAULT_SIDE = 192
"""The image side of the scenarios that compare latencies before and after a fault: about 9x
the work of ``SIDE``, so that a request's time is the devices' work, not a few ms of noise."""
TIMEOUT_S = 30.0


@dataclass
class Row:
    """One scenario's counts (see the module's docstring) and latencies."""

    scenario: str
    attempted: int = 0
    refused: int = 0
    crashed: int = 0
    hung: int = 0
    wrong: int = 0
    lost: int = 0
    latencies_s: list[float] = field(default_factory=list)
    served_by: dict[str, int] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)
    note: str = ""

    def cells(self) -> list[str]:
        lat = sorted(self.latencies_s)
        p50 = f"{1e3 * statistics.median(lat):.0f}" if lat else "-"
        p99 = f"{1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]:.0f}" if lat else "-"
        counts = (self.attempted, self.refused, self.crashed, self.hung, self.wrong, self.lost)
        return [self.scenario, *map(str, counts), p50, p99, self.note]


class Cluster:
    """The broker, the agents and the orchestrators, and the oracle for their answers."""

    def __init__(self, workdir: Path) -> None:
        clients = ("client", "honest", "flood", *(f"c{i}" for i in range(64)))
        self.broker = BrokerProcess(
            workdir / "broker", [*DEVICES, "dev-x"], orchestrators=(*ORCHESTRATORS, "o-x"), clients=clients
        )
        self.group = ProcessGroup(workdir)
        self._counting = threading.Lock()  # scenarios count one row from many threads
        chain, self.inputs = load_chain("smallcnn"), {}
        for side in (SIDE, FAULT_SIDE):
            x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                self.inputs[side] = (x, chain.model(x), float64_model(chain.model)(x.double()))
        self.x, self.ref32, self.ref64 = self.inputs[SIDE]

    def start_device(self, name: str) -> None:
        self.group.start(name, "device", "--broker", self.broker.url(name), "--models", "smallcnn")
        self.group.wait_for_log(name, "online, holding", timeout=120)

    def start_orchestrator(self, name: str) -> None:
        self.group.start(name, "orchestrator", "--broker", self.broker.url(name), "--model", "smallcnn")
        self.group.wait_for_log(name, "ready", timeout=120)

    def up(self) -> None:
        for name in DEVICES:
            self.group.start(name, "device", "--broker", self.broker.url(name), "--models", "smallcnn")
        for name in ORCHESTRATORS:
            self.start_orchestrator(name)
        for name in DEVICES:
            self.group.wait_for_log(name, "online, holding", timeout=120)
        time.sleep(1.0)

    def dead(self) -> list[str]:
        return [name for name, p in self.group.processes.items() if p.poll() is not None]

    def rss_mb(self) -> dict[str, float]:
        pids = {name: p.pid for name, p in self.group.processes.items() if p.poll() is None}
        pids["broker"] = self.broker.process.pid
        return {name: resident_mb(pid) for name, pid in pids.items()}

    def ask(
        self, client: EdgeCIClient, row: Row, timeout: float = TIMEOUT_S, strategy: str = "", side: int = SIDE
    ) -> None:
        """One request (an image ``side`` pixels square), counted in ``row`` (safely from any number of threads)."""
        x, ref32, ref64 = self.inputs[side]
        started = time.perf_counter()
        try:
            result = client.infer(x, "smallcnn", strategy, timeout=timeout)
        except InferenceError as exc:
            outcome = "hung" if "no answer in time" in str(exc) else "refused" if "busy" in str(exc) else "lost"
            with self._counting:
                row.attempted += 1
                setattr(row, outcome, getattr(row, outcome) + 1)
            return
        exact = faithful(result.logits, ref32, ref64)
        with self._counting:
            row.attempted += 1
            row.latencies_s.append(time.perf_counter() - started)
            row.served_by[result.orchestrator] = row.served_by.get(result.orchestrator, 0) + 1
            row.devices |= set(result.devices)
            row.wrong += not exact


def _parallel(work: Callable[[int], None], count: int) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@contextmanager
def session(cluster: Cluster, user: str, *filters: str) -> Iterator[MqttBus]:
    with session_at(cluster.broker, user, *filters) as bus:
        yield bus


@contextmanager
def session_at(broker: BrokerProcess, user: str, *filters: str) -> Iterator[MqttBus]:
    bus = MqttBus(broker.address(user))
    for topic_filter in filters:
        bus.subscribe(topic_filter)
    bus.start()
    try:
        yield bus
    finally:
        bus.stop()


# ---------------------------------------------------------------------------- scenarios
ROLE_USERS: dict[Role, str] = {"device": "dev-x", "orchestrator": "o-x", "client": "c63", "watcher": "watcher"}


def role_matrix(cluster: Cluster) -> Row:
    """Every role writes every kind of topic, under its own name and another's; an admin
    sink reads what the broker let through; expected: exactly what the grants say."""
    row = Row(f"role matrix: writes by delivery (4 roles x {len(TOPICS)} topics x own/other)")
    with session(cluster, ADMIN_USER, "edgeci/#") as sink:
        collect(sink, 0.5)
        expected: dict[tuple[str, str], bool] = {}
        for role, user in ROLE_USERS.items():
            with session(cluster, user) as bus:
                for topic in TOPICS:
                    for own in (True, False):
                        ids = {name: (user if own else "someone") for name in topic.ids}
                        built = topic.build(**ids)
                        allowed = any(
                            g.role == role and g.access in ("write", "readwrite") and (own or not g.own)
                            for g in topic.grants
                        )
                        expected[(built, user)] = allowed
                        row.attempted += 1
                        bus.publish(built, f"matrix {user}".encode(), wait=5)
        seen = {(m.topic, m.payload.decode(errors="replace").removeprefix("matrix ")) for m in collect(sink, 1.5)}
    for key, allowed in expected.items():
        delivered = key in seen
        row.refused += not delivered and not allowed
        row.wrong += delivered != allowed
    row.note = f"{sum(expected.values())} allowed by the grants, all others refused by the broker"
    return row


def read_matrix(cluster: Cluster) -> Row:
    """Every role subscribes to every kind of topic, with its own name and another's (and the
    orchestrators' shared subscription); an oracle user that may write anything publishes
    on each; expected: each role receives exactly what its read grants say."""
    with cluster.broker.admin() as admin:
        admin.run([
            {"command": "createRole", "rolename": "bench-oracle",
             "acls": [{"acltype": "publishClientSend", "topic": "edgeci/#", "allow": True}]},
            {"command": "createClient", "username": "bench-oracle", "password": "bench-oracle-secret",
             "clientid": "bench-oracle", "roles": [{"rolename": "bench-oracle"}]},
        ])  # fmt: skip
    cluster.broker.credentials.passwords["bench-oracle"] = "bench-oracle-secret"
    row = Row(f"role matrix: reads by delivery (4 roles x {len(TOPICS)} topics x own/other, and $share)")
    wrong: list[str] = []
    sessions = {}
    for user in ROLE_USERS.values():
        filters = [t.filter_with(**{n: user for n in t.ids}) for t in TOPICS]
        filters += [t.filter_with(**{n: "someone" for n in t.ids}) for t in TOPICS] + [SHARED_REQUESTS]
        sessions[user] = MqttBus(cluster.broker.address(user))
        for topic_filter in filters:
            sessions[user].subscribe(topic_filter)
        sessions[user].start()
    try:
        time.sleep(0.5)
        for bus in sessions.values():
            collect(bus, 0.2)  # retained states
        published: list[tuple[str, str]] = []  # (topic, the name in it)
        with session(cluster, "bench-oracle") as oracle:
            for named in [*ROLE_USERS.values(), "someone"]:
                for topic in TOPICS:
                    built = topic.build(**{n: named for n in topic.ids})
                    oracle.publish(built, b"oracle", wait=5)
                    published.append((built, named))
        got = {user: {m.topic for m in collect(bus, 1.0) if m.payload == b"oracle"} for user, bus in sessions.items()}
    finally:
        for bus in sessions.values():
            bus.stop()
    for role, user in ROLE_USERS.items():
        for built, named in published:
            if named not in (user, "someone"):
                continue  # it subscribed to its own name and another's only
            topic = next(t for t in TOPICS if t.parse(built) is not None)
            ids = topic.parse(built) or {}
            if role == "orchestrator" and topic is INFER_REQUESTS:
                continue  # the shared subscription hands each request to one of the orchestrators
            if role == "watcher":
                allowed = not topic.data  # metadata only: no client data (images, tiles, rows, answers)
            else:
                allowed = any(
                    g.role == role and g.access in ("read", "readwrite") and (not g.own or ids.get(g.own) == user)
                    for g in topic.grants
                )
            row.attempted += 1
            delivered = built in got[user]
            row.refused += not delivered and not allowed
            if delivered != allowed:
                row.wrong += 1
                wrong.append(f"{user} {'got' if delivered else 'missed'} {built}")
    row.note = "the orchestrator reads requests through $share only; the watcher no client data"
    if wrong:
        row.note += "; WRONG: " + ", ".join(wrong[:5])
        print("\n".join(wrong), file=sys.stderr)
    return row


def malformed(cluster: Cluster, count: int) -> Row:
    """Hostile payloads on every topic the processes read, each with a credential that may
    write there (stolen credentials of every role); then the cluster must still answer."""
    targets = {
        "o-x": [DEVICE_TASKS.build(device=d) for d in DEVICES] + [AUCTION_CALL.build(round="bad")],
        "dev-x": [
            DEVICE_STATE.build(device="dev-x"),
            AUCTION_BIDS.build(round="bad", device="dev-x"),
            DEVICE_PROBE.build(device="dev-x"),
            *(DEVICE_ROWS.build(device=d, sender="dev-x", request="bad") for d in DEVICES),
            *(RESULTS.build(orchestrator=o, device="dev-x", request="bad") for o in ORCHESTRATORS),
        ],
        "c63": [INFER_REQUESTS.build(client="c63")],
    }
    payloads = hostile_payloads()[:-1]  # the oversize frame would only be refused by our own publish check
    per_topic = max(1, -(-count // sum(len(t) for t in targets.values())))  # at least ``count`` in all
    row = Row(f"malformed payloads ({len(payloads)} kinds) on every subscribed topic")
    for user, topics in targets.items():
        with session(cluster, user) as bus:
            for topic in topics:
                for index in range(per_topic):
                    bus.publish(topic, payloads[index % len(payloads)], wait=10)
                    row.attempted += 1
    time.sleep(2.0)
    row.crashed = len(cluster.dead())
    row.refused = row.attempted  # none of them may be acted on
    with EdgeCIClient(cluster.broker.address("client")) as client:
        check = Row("after")
        for _ in range(5):
            cluster.ask(client, check)
    row.wrong, row.lost, row.hung = check.wrong, check.lost, check.hung
    row.note = f"then 5 requests: {5 - check.wrong - check.lost - check.hung} exact"
    return row


def sequential(cluster: Cluster, count: int) -> Row:
    row = Row(f"{count} sequential requests")
    with EdgeCIClient(cluster.broker.address("client")) as client:
        for index in range(count):
            cluster.ask(client, row)
            if index % 100 == 99:
                print(f"  {index + 1}/{count}", file=sys.stderr, flush=True)
    row.crashed = len(cluster.dead())
    return row


def concurrent(cluster: Cluster, clients: int, each: int) -> Row:
    row = Row(f"{clients} clients x {each} requests at once")

    def one_client(index: int) -> None:
        with EdgeCIClient(cluster.broker.address(f"c{index}")) as client:
            for _ in range(each):
                cluster.ask(client, row, timeout=120)

    _parallel(one_client, clients)
    row.crashed = len(cluster.dead())
    return row


def device_kills(cluster: Cluster, kills: int) -> Row:
    """A device is SIGKILLed 0.3 s into a request, then restarted; every request must be exact."""
    row = Row(f"a device SIGKILLed mid-request ({kills} times)")
    with EdgeCIClient(cluster.broker.address("client")) as client:
        for index in range(kills):
            victim = DEVICES[index % len(DEVICES)]
            killer = threading.Timer(0.3, cluster.group.processes[victim].kill)
            killer.start()
            cluster.ask(client, row, strategy="aofl")
            killer.join()
            cluster.start_device(victim)
            time.sleep(0.5)
    row.note = "each device restarted after its kill"
    return row


def broker_restarts(cluster: Cluster, sig: signal.Signals) -> Row:
    """Requests in flight when the broker stops: each must fail clearly (none hang); after
    the restart the cluster answers again (time to the first exact answer)."""
    row = Row(f"broker {sig.name} and restart, 4 requests in flight")
    with EdgeCIClient(cluster.broker.address("client")) as client:
        frozen = [cluster.group.processes[o] for o in ORCHESTRATORS]
        for process in frozen:  # the requests cannot finish before the broker goes
            process.send_signal(signal.SIGSTOP)
        stopper = threading.Timer(1.0, lambda: cluster.broker.process.send_signal(sig))
        stopper.start()
        _parallel(lambda _: cluster.ask(client, row), 4)
        stopper.join()
        cluster.broker.process.wait(10)
        for process in frozen:
            process.send_signal(signal.SIGCONT)
    started = time.perf_counter()
    cluster.broker.restart()
    recovered = None
    with EdgeCIClient(cluster.broker.address("client")) as client:
        while time.perf_counter() - started < 90 and recovered is None:
            probe = Row("")
            cluster.ask(client, probe, timeout=10)
            if probe.latencies_s and not probe.wrong:
                recovered = time.perf_counter() - started
            else:
                time.sleep(1.0)
    row.crashed = len(cluster.dead())
    failed_clearly = row.lost + row.refused
    row.note = f"{failed_clearly} of {row.attempted} in-flight requests failed with a clear error; " + (
        f"exact answers again {recovered:.1f} s after the restart" if recovered else "no answer within 90 s"
    )
    return row


def _o1_dies(cluster: Cluster, client: EdgeCIClient, row: Row, requests: int, after_s: float, frozen: bool) -> None:
    """``requests`` at once while o1 is SIGKILLed ``after_s`` in (``frozen``: stopped first,
    so its will is all that tells); then o1 is started again."""
    victim = cluster.group.processes["o1"]
    if frozen:
        victim.send_signal(signal.SIGSTOP)
    killer = threading.Timer(after_s, victim.kill)
    killer.start()
    _parallel(lambda _: cluster.ask(client, row), requests)
    killer.join()
    victim.wait(10)
    cluster.start_orchestrator("o1")


def _served_by(row: Row) -> str:
    return "answered by " + ", ".join(f"{o}: {n}" for o, n in sorted(row.served_by.items()))


def orchestrator_kill(cluster: Cluster) -> Row:
    """o1 frozen, 6 requests shared between o1 and o2, o1 SIGKILLed 1 s later."""
    row = Row("an orchestrator SIGKILLed with requests running (6)")
    with EdgeCIClient(cluster.broker.address("client")) as client:
        _o1_dies(cluster, client, row, 6, after_s=1.0, frozen=True)
    row.note = _served_by(row)
    return row


def orchestrator_crash(cluster: Cluster) -> Row:
    """12 requests at once, o1 SIGKILLed 50 ms later (no freeze: it dies while serving and
    holding queued requests); the same burst without the kill gives the expected latency."""
    row, expected = Row("an orchestrator SIGKILLed under a burst of 12 requests"), Row("")
    with EdgeCIClient(cluster.broker.address("client")) as client:
        _parallel(lambda _: cluster.ask(client, expected), 12)
        _o1_dies(cluster, client, row, 12, after_s=0.05, frozen=False)
    slowest = max(row.latencies_s, default=0.0)
    typical = max(expected.latencies_s, default=0.0)
    ratio = f"{slowest / typical:.1f}x" if typical > 0 else "no answer in"
    row.note = (
        f"{_served_by(row)}; slowest {1e3 * slowest:.0f} ms, {ratio} the slowest of the same "
        f"burst without a kill ({1e3 * typical:.0f} ms)"
    )
    return row


def results_flood(cluster: Cluster) -> Row:
    """150 forged 4 MB results and 150 first frames of 64 MB chunked payloads on o2's topic."""
    row = Row("150 forged 4 MB results + 150 chunk frames at an orchestrator")
    with sampled_rss(cluster.group.processes["o2"].pid) as rss, session(cluster, "dev-x") as bus:
        row.attempted = forged_results_flood(bus, "o2", "dev-x")
        time.sleep(1.0)
    row.refused = row.attempted
    row.crashed = len(cluster.dead())
    row.note = f"o2 RSS {rss.before:.0f} MB, peak {rss.peak:.0f} MB (+{rss.peak - rss.before:.0f}; target +50)"
    return row


def request_flood(cluster: Cluster) -> Row:
    """One client queues 120 requests; another's single request must still be served."""
    row = Row("120 requests queued by one client, 1 by another")
    honest = Row("")
    with EdgeCIClient(cluster.broker.address("flood")) as flood, EdgeCIClient(cluster.broker.address("honest")) as own:
        threads = [threading.Thread(target=cluster.ask, args=(flood, row, 120)) for _ in range(120)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        cluster.ask(own, honest, timeout=TIMEOUT_S)
        for thread in threads:
            thread.join()
    row.wrong += honest.wrong
    row.hung += honest.hung
    row.lost += honest.lost
    honest_ms = f"{1e3 * honest.latencies_s[0]:.0f} ms" if honest.latencies_s else "no answer"
    row.note = f"the other client's request: {honest_ms}; {row.refused} of the flood's refused as busy"
    return row


def _p50_ms(row: Row) -> float:
    return 1e3 * statistics.median(row.latencies_s) if row.latencies_s else float("nan")


def _ratio(after: Row, before: Row) -> str:
    """The p50 after a fault over the p50 before, and on which devices each ran."""
    if not (after.latencies_s and before.latencies_s):
        return "no answer"
    on = f"on {', '.join(sorted(after.devices))} against {', '.join(sorted(before.devices))}"
    return f"{_p50_ms(after) / _p50_ms(before):.2f}x the p50 before ({on})"


def _settle(cluster: Cluster, client: EdgeCIClient, strategy: str = "") -> None:
    """Let an earlier scenario's penalties lapse and their probation pass (requests after a
    device's hold take it as a trial), so that the latency measured before a fault is the
    whole cluster's."""
    time.sleep(FIRST_HOLD_S + 0.5)
    for _ in range(4):
        cluster.ask(client, Row(""), strategy=strategy, side=FAULT_SIDE)


def _fold(first: Row, into: Row) -> None:
    """Count the request that met the fault in the row of the ones after it."""
    into.attempted += first.attempted
    into.wrong += first.wrong
    into.lost += first.lost
    into.hung += first.hung


def revoked_device(cluster: Cluster, requests: int = 5) -> Row:
    """A device joins, is removed with ``provision remove`` (the broker delivers no will for a
    deleted user): the next requests run at the latency they had before it joined, and an
    orchestrator's session started afterwards does not see it online."""
    row, before = Row("a device removed while online (provision remove)"), Row("")
    with EdgeCIClient(cluster.broker.address("client")) as client:
        for _ in range(requests):
            cluster.ask(client, before, side=FAULT_SIDE)
        cluster.broker.add_user("device", "dev-6")
        cluster.start_device("dev-6")
        time.sleep(1.0)
        for _ in range(2):
            cluster.ask(client, Row(""), side=FAULT_SIDE)  # it takes work
        with cluster.broker.admin() as admin:
            admin.remove_user("dev-6")
        for _ in range(requests):
            cluster.ask(client, row, side=FAULT_SIDE)
    cluster.group.stop("dev-6")  # refused by the broker from now on
    cluster.group.processes.pop("dev-6", None)
    later = device_states(MqttBus(cluster.broker.address("o-x")), lambda s: set(DEVICES) <= set(s), timeout=10)
    row.wrong += "dev-6" in later
    row.crashed = len(cluster.dead())
    row.note = (
        f"next {requests} requests p50 {_p50_ms(row):.0f} ms, {_ratio(row, before)}, before it joined; "
        f"an orchestrator started later sees {'it ONLINE' if 'dev-6' in later else 'it offline'}"
    )
    return row


def frozen_device(cluster: Cluster, requests: int = 5) -> Row:
    """The device that served the last request is stopped (SIGSTOP: connected, silent):
    the first request after pays its deadline, the next ones go elsewhere."""
    row, before, first = Row("a device frozen (SIGSTOP) under flow"), Row(""), Row("")
    with EdgeCIClient(cluster.broker.address("client")) as client:
        _settle(cluster, client)
        for _ in range(requests):
            cluster.ask(client, before, side=FAULT_SIDE)
        served = client.infer(cluster.inputs[FAULT_SIDE][0], "smallcnn", timeout=TIMEOUT_S).devices
        victim = cluster.group.processes[served[0]]
        victim.send_signal(signal.SIGSTOP)
        try:
            cluster.ask(client, first, side=FAULT_SIDE)
            for _ in range(requests):
                cluster.ask(client, row, side=FAULT_SIDE)
        finally:
            victim.send_signal(signal.SIGCONT)
    _fold(first, into=row)
    row.crashed = len(cluster.dead())
    row.note = (
        f"{served[0]} frozen: the first request {1e3 * max(first.latencies_s, default=float('nan')):.0f} ms, "
        f"the next {requests} p50 {_p50_ms(row):.0f} ms, {_ratio(row, before)}"
    )
    return row


def bidding_ghost(cluster: Cluster, requests: int = 5, strategy: str = "flow:orchestrator-tail") -> Row:
    """A device credential announces a real device's profile, bids at once in every round
    (cheaper than anyone) and never computes. Split requests (``flow`` that always splits):
    the first it wins fails over; the next run at the latency they had before it came."""
    row, before, first = Row("a device that bids and never computes (split flow)"), Row(""), Row("")
    with session(cluster, ADMIN_USER, DEVICE_STATE.build(device=DEVICES[0])) as admin:
        real = next(decode(m.payload) for m in collect(admin, 1.0))
    assert isinstance(real, DeviceStateMessage)
    stop = threading.Event()
    with session(cluster, "dev-x", AUCTION_CALL.filter) as ghost:
        ghost.will(DEVICE_STATE.build(device="dev-x"), encode(DeviceStateMessage("dev-x", False)))

        def bid() -> None:
            for event in events_until(ghost, stop):
                call = decode(event.payload) if isinstance(event, Inbound) else None
                if isinstance(call, CallMessage):
                    lots = tuple(LotPrices((1e-4,) * len(lot.items), (1e-4,) * len(lot.items)) for lot in call.lots)
                    bids = AUCTION_BIDS.build(round=call.round, device="dev-x")
                    ghost.publish(bids, encode(BidMessage(call.round, "dev-x", 0.0, lots)))

        bidder = threading.Thread(target=bid, daemon=True)
        with EdgeCIClient(cluster.broker.address("client")) as client:
            _settle(cluster, client, strategy)
            for _ in range(requests):
                cluster.ask(client, before, strategy=strategy, side=FAULT_SIDE)
            bidder.start()
            online = replace(real, device="dev-x")
            ghost.publish(DEVICE_STATE.build(device="dev-x"), encode(online), retain=True, wait=5)
            time.sleep(0.5)
            cluster.ask(client, first, strategy=strategy, side=FAULT_SIDE)
            for _ in range(requests):
                cluster.ask(client, row, strategy=strategy, side=FAULT_SIDE)
        stop.set()
        ghost.publish(
            DEVICE_STATE.build(device="dev-x"), encode(DeviceStateMessage("dev-x", False)), retain=True, wait=5
        )
        bidder.join(timeout=5)
    _fold(first, into=row)
    row.crashed = len(cluster.dead())
    row.note = (
        f"the first request {1e3 * max(first.latencies_s, default=float('nan')):.0f} ms; the next {requests} "
        f"p50 {_p50_ms(row):.0f} ms, {_ratio(row, before)}, before it came"
    )
    return row


def watcher_reads(cluster: Cluster, requests: int = 3) -> Row:
    """A watcher subscribed to everything while requests run: what it receives carries no
    client data (no payload on a data topic), and the senders' reports describe the traffic."""
    row = Row(f"a watcher during {requests} requests")
    with session(cluster, "watcher", "#") as watcher, EdgeCIClient(cluster.broker.address("client")) as client:
        collect(watcher, 0.5)
        time.sleep(0.5)  # the agents hear the watcher's state (edgeci watch announces itself; this session too)
        watcher.publish(
            WATCHER_STATE.build(watcher="watcher"), encode(WatcherStateMessage("watcher", True)), retain=True
        )
        time.sleep(0.5)
        for _ in range(requests):
            cluster.ask(client, row, strategy="flow:orchestrator-tail")
        got = collect(watcher, 1.0)
        watcher.publish(
            WATCHER_STATE.build(watcher="watcher"), encode(WatcherStateMessage("watcher", False)), retain=True
        )
    data = [m for m in got if any(t.data and t.parse(m.topic) is not None for t in TOPICS)]
    reports = [m for m in got if DEVICE_TRAFFIC.parse(m.topic) or ORCHESTRATOR_TRAFFIC.parse(m.topic)]
    row.wrong += len(data)
    row.note = (
        f"received {sum(len(m.payload) for m in got) / 1e3:.0f} kB in {len(got)} messages: "
        f"{sum(len(m.payload) for m in data)} B of client data, {len(reports)} traffic reports"
    )
    return row


def malformed_requests(cluster: Cluster, count: int = 30) -> Row:
    """Requests whose image cannot be decoded (complex64, float16, a shape without data),
    each with its client's own response topic: every one must be answered with why."""
    row = Row(f"{count} malformed requests (complex64, float16, shape without data)")
    images = [
        {"dtype": "complex64", "shape": [1, 3, SIDE, SIDE], "data": bytes(8 * 3 * SIDE * SIDE)},
        {"dtype": "float16", "shape": [1, 3, SIDE, SIDE], "data": bytes(2 * 3 * SIDE * SIDE)},
        {"dtype": "float32", "shape": [1, 3, SIDE, SIDE], "data": b""},
    ]
    own = CLIENT_RESPONSES.build(client="c62")
    with session(cluster, "c62", own) as bus:
        started: dict[bytes, float] = {}
        for index in range(count):
            correlation = f"bad-{index}".encode()
            request = {"v": 1, "type": "infer", "request": f"bad-{index}", "model": "smallcnn"}
            payload = msgpack.packb({**request, "image": images[index % len(images)]}, use_bin_type=True)
            started[correlation] = time.perf_counter()
            bus.publish(INFER_REQUESTS.build(client="c62"), payload, response_topic=own, correlation=correlation)
        for event in events_until(bus, deadline=time.perf_counter() + 10):
            if isinstance(event, Inbound) and event.correlation in started:
                answer = decode(event.payload)
                if isinstance(answer, ResponseMessage) and "malformed request" in answer.error:
                    row.latencies_s.append(time.perf_counter() - started.pop(event.correlation))
            if not started:
                break
    row.attempted = count
    row.refused = len(row.latencies_s)
    row.hung = len(started)
    row.note = "each answered with why (the orchestrator names what is malformed)"
    return row


def memory_per_role(workdir: Path) -> dict[str, dict[str, float]]:
    """RSS (MB) of each role serving VGG-16 and ResNet-34 at 224x224, idle and after two
    requests of each: a device as started by default (it makes the part of a tail it is
    given), a device with no memory for a tail (never given one), and an orchestrator."""
    broker = BrokerProcess(workdir / "memory-broker", ["dev-tail", "dev-no-tail", "dev-x"], orchestrators=("o-mem",))
    (workdir / "memory").mkdir(exist_ok=True)
    group = ProcessGroup(workdir / "memory")
    both = "vgg16,resnet34"
    try:
        group.start("dev-tail", "device", "--broker", broker.url("dev-tail"), "--models", both)
        no_tail = ("--models", both, "--tail-memory-mb", "0")
        group.start("dev-no-tail", "device", "--broker", broker.url("dev-no-tail"), *no_tail)
        models = ("--model", "vgg16", "--model", "resnet34")
        group.start("o-mem", "orchestrator", "--broker", broker.url("o-mem"), *models)
        for name in ("dev-tail", "dev-no-tail"):
            group.wait_for_log(name, "online, holding", timeout=300)
        group.wait_for_log("o-mem", "ready", timeout=300)
        time.sleep(1.0)
        pids = {name: p.pid for name, p in group.processes.items()}
        idle = {name: resident_mb(pid) for name, pid in pids.items()}
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
        with EdgeCIClient(broker.address("client")) as client:
            for model in ("vgg16", "resnet34", "vgg16", "resnet34"):
                client.infer(x, model, timeout=300)
        time.sleep(3.0)  # idle: a device gives back what the requests' activations took
        served = {name: resident_mb(pid) for name, pid in pids.items()}
        peak = {name: resident_mb(pid, "VmHWM") for name, pid in pids.items()}
        tail = {name: tail_made_mb(group.log_text(name)) for name in ("dev-tail", "dev-no-tail")}
        flood = rows_flood_at(broker, group, "dev-no-tail", idle["dev-no-tail"], x)
    finally:
        group.close()
        broker.stop()
    return {"idle": idle, "served": served, "peak": peak, "tail": tail, "flood": flood}


def rows_flood_at(
    broker: BrokerProcess, group: ProcessGroup, victim: str, fresh_mb: float, x: torch.Tensor
) -> dict[str, float]:
    """Another device's credential floods ``victim``'s rows topic (``tests.hostile.rows_flood``);
    its RSS before, at the peak, and how long until it is within 20 MB of its fresh idle
    (``fresh_mb``); then it must still serve (VGG-16, exact by the model's own error)."""
    pid = group.processes[victim].pid
    with sampled_rss(pid) as rss, session_at(broker, "dev-x") as attacker:
        started = time.perf_counter()
        frames = rows_flood(attacker, victim, "dev-x")
        sent_s = time.perf_counter() - started
    flooded = time.perf_counter()
    while resident_mb(pid) > fresh_mb + 20 and time.perf_counter() - flooded < 30:
        time.sleep(0.1)
    back_s = time.perf_counter() - flooded
    with EdgeCIClient(broker.address("client")) as client:
        served = client.infer(x, "vgg16", timeout=300)
    chain = load_chain("vgg16")  # the devices' seeded weights
    with torch.inference_mode():
        ref32, ref64 = chain.model(x), float64_model(chain.model)(x.double())
    return {
        "frames": frames,
        "sent_s": sent_s,
        "before": rss.before,
        "peak": rss.peak,
        "back_s": back_s,
        "after": resident_mb(pid),
        "exact_after": float(faithful(served.logits, ref32, ref64)),
    }


def tail_made_mb(log_text: str) -> float:
    """MB of fully connected weights a device made for the tail parts it was given, from
    its log: the rows of a first layer it held last, per model, and whole layers made."""
    rows = dict(re.findall(r"(\w+): made \d+ chunk\(s\) of \S+ rows; (\d+) MB of tail rows held", log_text))
    layers = re.findall(r"made \d+ fully connected layer\(s\), (\d+) MB", log_text)
    return sum(float(v) for v in rows.values()) + sum(float(v) for v in layers)


# ---------------------------------------------------------------------------- report
HEADERS = ["scenario", "attempted", "refused", "crashed", "hung", "wrong", "lost", "p50 ms", "p99 ms", "note"]


def markdown(
    rows: list[Row], rss: dict[str, dict[str, float]], roles: dict[str, dict[str, float]], seconds: float
) -> str:
    lines = [
        "# Reliability",
        "",
        f"`python -m bench.reliability` on loopback, {machine_line()}; {seconds / 60:.1f} min. The cluster:",
        "Mosquitto with the generated configuration (Dynamic Security roles), 4 device agents, 2",
        f"orchestrators, `smallcnn` at {SIDE}x{SIDE} (the runtime's behaviour is measured, not model speed).",
        "Columns are defined in `bench/reliability.py`'s docstring: *refused* = turned away as intended,",
        "*hung* = waited out the client's timeout, *wrong* = not faithful to the model (or a",
        "forbidden delivery), *lost* = a clear error where an answer was possible.",
        "",
        "The scenarios that compare latencies before and after a fault (a device removed, frozen, or",
        f"bidding and never computing) ask for {FAULT_SIDE}x{FAULT_SIDE} images, about 9x the work, so that a",
        "request's time is the devices' work rather than a few milliseconds of noise; the request that meets",
        "the fault is counted in its row and its latency is in the note. *a watcher during 3 requests*:",
        "*wrong* counts messages on a data topic it received (client data); *malformed requests*: *refused*",
        "counts the requests answered with why, *hung* those left unanswered.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
        *("| " + " | ".join(row.cells()) + " |" for row in rows),
        "",
        "RSS per process (MB), before the first scenario and after the last:",
        "",
        "| process | before | after |",
        "|---|---|---|",
        *(
            f"| {name} | {rss['before'].get(name, 0):.0f} | {rss['after'].get(name, 0):.0f} |"
            for name in sorted(rss["before"])
        ),
        "",
        "RSS per role serving VGG-16 and ResNet-34 at 224x224 (MB; `memory_per_role`): idle after start-up,",
        "idle after two requests of each model, and the peak (start-up and requests included). A device",
        "holds no classifier (VGG-16's is 470 MB) until the planner gives it part of a tail, within the",
        "memory it offers (default: half of what the machine has available); *tail made* is what it made",
        "for that, from its log. *dev-no-tail* (`--tail-memory-mb 0`) is never given one. Target for a",
        "device: 450 MB.",
        "",
        "| role | idle | idle after serving | peak | tail made |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {roles['idle'][name]:.0f} | {roles['served'][name]:.0f} | {roles['peak'][name]:.0f} "
            f"| {_tail_cell(roles['tail'].get(name))} |"
            for name in sorted(roles["idle"])
        ),
        "",
        *_flood_lines(roles["flood"]),
        "",
        "Not in this run: TLS (`tests/test_tls.py`).",
        "",
    ]
    return "\n".join(lines)


def _flood_lines(flood: dict[str, float]) -> list[str]:
    """The rows flood at *dev-no-tail* (``rows_flood_at``), after it served."""
    return [
        f"Hostile rows at *dev-no-tail* after it served, from another device's credential "
        f"(`tests.hostile.rows_flood`: {flood['frames']:.0f} frames in {flood['sent_s']:.1f} s: first frames of",
        "64 MB chunked payloads, whole 4 MB rows messages and a chunked zeros bomb declaring 512 MB, all for",
        "requests it never ran). Targets: peak under 450 MB; within 20 MB of its fresh idle within 10 s.",
        "",
        "| before | peak | back within 20 MB of fresh idle after | RSS then | next VGG-16 request |",
        "|---|---|---|---|---|",
        f"| {flood['before']:.0f} MB | {flood['peak']:.0f} MB | {flood['back_s']:.1f} s | {flood['after']:.0f} MB | "
        f"{'exact' if flood['exact_after'] else 'NOT EXACT'} |",
    ]


def _tail_cell(made_mb: float | None) -> str:
    return "whole model" if made_mb is None else f"{made_mb:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--each", type=int, default=10)
    parser.add_argument("--malformed", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DOCS / "RELIABILITY.md")
    args = parser.parse_args()
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="edgeci-reliability-"))
    cluster = Cluster(workdir)
    rows: list[Row] = []
    try:
        cluster.up()
        rss = {"before": cluster.rss_mb()}
        scenarios: list[Callable[[], Row]] = [
            lambda: role_matrix(cluster),
            lambda: read_matrix(cluster),
            lambda: malformed(cluster, args.malformed),
            lambda: sequential(cluster, args.sequential),
            lambda: concurrent(cluster, args.clients, args.each),
            lambda: device_kills(cluster, args.kills),
            lambda: orchestrator_kill(cluster),
            lambda: orchestrator_crash(cluster),
            lambda: results_flood(cluster),
            lambda: request_flood(cluster),
            lambda: malformed_requests(cluster),
            lambda: watcher_reads(cluster),
            lambda: revoked_device(cluster),
            lambda: bidding_ghost(cluster),  # before a real device is held out: the same devices before and after
            lambda: frozen_device(cluster),
            lambda: broker_restarts(cluster, signal.SIGTERM),
            lambda: broker_restarts(cluster, signal.SIGKILL),
        ]
        for scenario in scenarios:
            row = scenario()
            rows.append(row)
            print(" | ".join(row.cells()), file=sys.stderr, flush=True)
        rss["after"] = cluster.rss_mb()
        roles = memory_per_role(workdir)
    except EdgeCIError as exc:
        print(f"reliability: {exc}\n{workdir}", file=sys.stderr)
        return 1
    finally:
        cluster.group.close()
        cluster.broker.stop()
    seconds = time.perf_counter() - started
    args.out.write_text(markdown(rows, rss, roles, seconds))
    data = args.out.parent / "bench"  # beside the report: a trial run elsewhere leaves docs/ alone
    data.mkdir(exist_ok=True)
    (data / "reliability.json").write_text(
        json.dumps(
            {
                "rows": [{**asdict(r), "devices": sorted(r.devices)} for r in rows],
                "rss_mb": rss,
                "roles_mb": roles,
                "seconds": seconds,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
