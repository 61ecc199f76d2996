"""End to end over a real Mosquitto with real agent and orchestrator processes.

What only the broker and real processes can show: the ACL file, the frame limit against
raw publishes, shared subscriptions across processes, wills after a SIGKILL, a broker
restart, SIGTERM, the CLI. The roles' decisions are tested in-process (test_roles.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.report import sampled_rss
from edgeci_mqtt.broker.dynsec import ADMIN_USER
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.bus.protocol import Inbound
from edgeci_mqtt.cli.demo_cmd import wait_for_devices
from edgeci_mqtt.client import EdgeCIClient, InferenceResult
from edgeci_mqtt.errors import InferenceError
from edgeci_mqtt.exactness import faithful
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES
from edgeci_mqtt.wire import (
    AUCTION_AWARD,
    AUCTION_BIDS,
    AUCTION_CALL,
    DEVICE_ROWS,
    DEVICE_STATE,
    DEVICE_TASKS,
    EVERYTHING,
    INFER_REQUESTS,
    MAX_PAYLOAD_BYTES,
    RESULTS,
    PackedArray,
    ProgramMessage,
    RowsMessage,
    decode,
    encode,
)
from tests.cluster import LocalCluster, collect_until, local_cluster, on_traffic, start_device, wait_for
from tests.exactness import References, assert_float32_faithful, whole_model_reference
from tests.hostile import (
    DEVICE_COMPLAINTS,
    ORCHESTRATOR_COMPLAINTS,
    WILDCARD_RESPONSE_TOPIC,
    forged_results_flood,
    hostile_payloads,
)

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster"), devices=3, models="smallcnn", orchestrators=2) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[EdgeCIClient]:
    with EdgeCIClient(cluster.broker.address("client")) as connected:
        yield connected


def test_every_strategy_gives_the_models_result_across_processes(
    cluster: LocalCluster, client: EdgeCIClient, references: References
) -> None:
    ref = references[("smallcnn", 64, 64)]
    x = ref.x
    for strategy in STRATEGY_NAMES:
        result = client.infer(x, "smallcnn", strategy, timeout=180)
        assert faithful(result.logits, ref.logits32, ref.logits64), strategy
        assert result.strategy == strategy and result.orchestrator in cluster.orchestrators
        assert result.devices, "the devices did the work"


def test_two_orchestrators_share_concurrent_requests(cluster: LocalCluster, references: References) -> None:
    ref = references[("smallcnn", 64, 64)]
    x = ref.x
    results: list[InferenceResult] = []

    logins = [cluster.broker.add_user("client", f"parallel-{index}") for index in range(3)]

    def ask(index: int) -> None:
        with EdgeCIClient(logins[index]) as own:
            for _ in range(3):
                results.append(own.infer(x, "smallcnn", timeout=60))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 9 and all(faithful(r.logits, ref.logits32, ref.logits64) for r in results)
    assert {r.orchestrator for r in results} == set(cluster.orchestrators)


def test_device_credentials_cannot_publish_as_another_device_or_award(cluster: LocalCluster) -> None:
    forged = [
        DEVICE_TASKS.build(device="dev-2"),
        AUCTION_AWARD.build(round="forged"),
        AUCTION_BIDS.build(round="forged", device="dev-2"),
        DEVICE_STATE.build(device="dev-2"),
        AUCTION_CALL.build(round="forged"),
        DEVICE_ROWS.build(device="dev-2", sender="dev-3", request="r"),  # rows posing as another device
    ]
    own_bid = AUCTION_BIDS.build(round="fine", device="dev-9")
    own_rows = DEVICE_ROWS.build(device="dev-2", sender="dev-9", request="r")
    last = DEVICE_ROWS.build(device="dev-9", sender="dev-9", request="last")  # to itself: both may read it
    intruder = MqttBus(cluster.broker.add_user("device", "dev-9"))  # a device of the cluster, not running
    watcher = MqttBus(cluster.broker.address(ADMIN_USER))  # the admin reads everything (after add_user's session)
    watcher.subscribe(EVERYTHING)
    watcher.start()
    intruder.subscribe(DEVICE_ROWS.filter)  # every device's rows: the broker refuses the filter
    intruder.subscribe(DEVICE_ROWS.filter_with(device="dev-9"))  # its own: allowed
    intruder.start()
    try:
        assert watcher.wait_subscribed(10) and intruder.wait_subscribed(10)  # granted or refused
        for topic in forged:
            intruder.publish(topic, b"forged", wait=2)
        intruder.publish(own_bid, b"own bid", wait=2)  # allowed: a control
        intruder.publish(own_rows, b"own rows", wait=2)  # allowed: rows under its own name
        intruder.publish(last, b"last", wait=2)  # published last: whatever got through came before it

        def ended(got: list[Inbound]) -> bool:
            return (last, b"last") in {(m.topic, m.payload) for m in got}

        seen = {(m.topic, m.payload) for m in collect_until(watcher, ended, what="the intruder's last rows")}
        overheard = {(m.topic, m.payload) for m in collect_until(intruder, ended, what="its own rows")}
    finally:
        intruder.stop()
        watcher.stop()
    assert {(own_bid, b"own bid"), (own_rows, b"own rows")} <= seen
    assert not seen & {(topic, b"forged") for topic in forged}  # (retained states are not forged)
    assert (own_rows, b"own rows") not in overheard, "a device read another device's rows"


def raw_publish(cluster: LocalCluster, user: str, topic: str, payload_file: Path) -> None:
    """One raw frame, not split or checked by our code: the real mosquitto_pub."""
    password = cluster.broker.credentials.passwords[user]
    command = [
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        str(cluster.broker.port),
        "-u",
        user,
        "-P",
        password,
        "-i",
        user,
    ]
    subprocess.run([*command, "-q", "1", "-t", topic, "-f", str(payload_file)], check=True, timeout=30)


def test_hostile_messages_change_nothing(
    cluster: LocalCluster, client: EdgeCIClient, references: References, tmp_path: Path
) -> None:
    """Every hostile payload on every topic the processes subscribe to, each sent with a
    credential that may write there: the orchestrators' for tasks and calls, a device's
    for its state and bids, the client's for results and requests."""
    for role, user in (("orchestrator", "o-hostile"), ("device", "dev-8"), ("client", "mallory")):
        cluster.broker.add_user(role, user)  # stolen credentials of each role
    attacks = {
        "o-hostile": [DEVICE_TASKS.build(device=d) for d in cluster.devices] + [AUCTION_CALL.build(round="x")],
        "dev-8": [DEVICE_STATE.build(device="dev-8"), AUCTION_BIDS.build(round="x", device="dev-8")],
        "mallory": [RESULTS.build(orchestrator=o, device="mallory", request="x") for o in cluster.orchestrators]
        + [INFER_REQUESTS.build(client="mallory")],
    }
    oversize = tmp_path / "oversize.bin"  # over our frame limit, under the broker's packet limit
    oversize.write_bytes(b"\x01" * (MAX_PAYLOAD_BYTES + 20_000))
    agents = (*cluster.devices, *cluster.orchestrators)
    before = {name: len(cluster.group.log_text(name)) for name in agents}  # what they logged before the attack

    def unheard() -> list[str]:
        """The complaints not logged since the attack began: dev-1's, and the orchestrators' (either may
        get a shared request)."""
        device_log = cluster.group.log_text("dev-1")[before["dev-1"] :]
        orchestrator_log = "".join(cluster.group.log_text(o)[before[o] :] for o in cluster.orchestrators)
        return [c for c in DEVICE_COMPLAINTS if c not in device_log] + [
            c for c in ORCHESTRATOR_COMPLAINTS if c not in orchestrator_log
        ]

    def dead() -> list[str]:
        return [name for name in agents if cluster.group.processes[name].poll() is not None]

    for user, topics in attacks.items():
        attacker = MqttBus(cluster.broker.address(user))
        attacker.start()
        try:
            for topic in topics:
                for payload in hostile_payloads()[:-1]:  # the last one is the oversize frame
                    attacker.publish(topic, payload, wait=5, response_topic=WILDCARD_RESPONSE_TOPIC)
        finally:
            attacker.stop()
        for topic in topics:  # once the attacker's session is over: one session per user
            raw_publish(cluster, user, topic, oversize)
    # every payload read and refused, each with its complaint (the oversize frames, sent last, too)
    wait_for(lambda: not unheard() or bool(dead()), 60, lambda: f"the complaints {unheard()}")
    for name in dead():
        raise AssertionError(f"{name} died:\n{cluster.group.log_text(name)}")
    ref = references[("smallcnn", 64, 64)]
    x = ref.x
    for strategy in ("edgeci", "deepthings"):
        assert faithful(client.infer(x, "smallcnn", strategy, timeout=60).logits, ref.logits32, ref.logits64)
    device_log = cluster.group.log_text("dev-1")
    assert "rejected" in device_log and "Traceback" not in device_log
    orchestrator_log = "".join(cluster.group.log_text(o) for o in cluster.orchestrators)
    assert "rejected message" in orchestrator_log and "Traceback" not in orchestrator_log


def test_a_flood_of_forged_results_costs_an_orchestrator_no_memory(
    cluster: LocalCluster, client: EdgeCIClient, references: References
) -> None:
    """150 forged 4 MB results and 150 chunk frames of a huge payload, from a device
    credential, on an orchestrator's results topic: it reads from the topic that no such
    request is in flight and drops them unread. Its RSS, sampled throughout, stays within
    +50 MB, and it goes on answering exactly."""
    flooder = MqttBus(cluster.broker.add_user("device", "dev-flood"))
    flooder.start()
    marker = DEVICE_STATE.build(device="dev-flood")  # a topic o1 reads, on the same session as the flood
    try:
        with sampled_rss(cluster.group.processes["o1"].pid) as rss:
            forged_results_flood(flooder, "o1", "dev-flood")
            # Sampled until o1 is through the flood: it reads its session's messages in order, so
            # once it refuses a malformed state sent after the flood, it has read (or dropped) the
            # flood. Sent again while unanswered: a full inbox drops what arrives.
            deadline = time.monotonic() + 60
            while f"o1: rejected message on {marker}" not in cluster.group.log_text("o1"):
                assert time.monotonic() < deadline, "o1 did not get through the flood within 60 s"
                flooder.publish(marker, b"after the flood", wait=5)
                time.sleep(0.2)
    finally:
        flooder.stop()
    print(f"orchestrator RSS under the flood: {rss.before:.0f} MB -> peak {rss.peak:.0f} MB")
    assert rss.peak - rss.before <= 50, f"RSS {rss.before:.0f} MB -> peak {rss.peak:.0f} MB"
    ref = references[("smallcnn", 64, 64)]
    assert faithful(client.infer(ref.x, "smallcnn", "edgeci", timeout=60).logits, ref.logits32, ref.logits64)


def test_flow_survives_a_device_killed_while_it_holds_rows(tmp_path: Path, references: References) -> None:
    """Under ``flow`` a device is frozen as soon as it has bid (so it wins rows and gets its
    program), then SIGKILLed: its will fires, the request is re-planned without it, the answer
    is exact. Rows sent afterwards for the finished request are dropped by the device, with a
    log line; rows for a request it never heard of wait in its holding area, then are dropped.
    (VGG-16: on an idle cluster ``flow`` runs a request whole where a split would end no
    sooner, and a small CNN's does not.)"""
    ref = references[("vgg16", 96, 96)]
    with (
        local_cluster(tmp_path, devices=3, models="vgg16", strategy="flow") as small,
        EdgeCIClient(small.broker.address("client")) as own,
    ):
        used = own.infer(ref.x, "vgg16", timeout=60).devices
        victim = "dev-2" if "dev-2" in used else used[0]
        process = small.group.processes[victim]
        steps = [  # frozen once it has bid, killed once its program is on the way to it
            (AUCTION_BIDS.filter_with(device=victim), lambda: process.send_signal(signal.SIGSTOP)),
            (DEVICE_TASKS.build(device=victim), process.kill),
        ]
        with on_traffic(small.broker, steps) as done:
            result = own.infer(ref.x, "vgg16", timeout=60)
        # (no bid at all: flow ran the request whole, as it may when a split would end no sooner)
        assert len(done) == 2, (done, used, result.devices, result.timings.get("whole_request"))
        assert_float32_faithful(result.logits, ref.logits32, ref.logits64, "flow after a kill")
        assert result.timings["recovered_tasks"] >= 1 and victim in result.devices  # it was sent work first
        left = [d for d in small.devices if d != victim]
        survivor, program = _a_program(small, left, lambda: own.infer(ref.x, "vgg16", timeout=60).devices)
        sender = next(d for d in left if d != survivor)  # it may have had no work: it may still send rows
        small.group.stop(sender)  # its credential, now free: one session per user
        forger = MqttBus(small.broker.address(sender))
        forger.start()
        try:
            for request in (program.request, "never-heard-of"):
                late = RowsMessage(
                    request, sender, 1, program.steps[0].out_region, PackedArray(np.zeros((1, 1, 1, 1), np.float32))
                )
                forger.publish(DEVICE_ROWS.build(device=survivor, sender=sender, request=request), encode(late), wait=2)
        finally:
            forger.stop()
        small.group.wait_for_log(survivor, "over here", timeout=10)
        small.group.wait_for_log(survivor, "for unknown requests", timeout=20)


def _a_program(small: LocalCluster, devices: list[str], ask: Callable[[], object]) -> tuple[str, ProgramMessage]:
    """A device of ``devices`` and the program it got for the request ``ask`` makes (read off
    the broker; with a small model the planner may give all the work to one of them)."""
    spy = MqttBus(small.broker.address(ADMIN_USER))  # programs carry client data: no watcher reads them
    for device in devices:
        spy.subscribe(DEVICE_TASKS.build(device=device))
    spy.start()
    try:
        assert spy.wait_subscribed(10)
        ask()  # its programs went out before its answer came back

        def a_program(got: list[Inbound]) -> bool:
            return isinstance(decode(got[-1].payload), ProgramMessage)

        event = collect_until(spy, a_program, what=f"a program for one of {devices}")[-1]
    finally:
        spy.stop()
    program = decode(event.payload)
    assert isinstance(program, ProgramMessage)
    return event.topic.split("/")[3], program


def test_a_device_killed_mid_inference(tmp_path: Path, references: References) -> None:
    """dev-2 freezes, then is killed while holding work: its will fires, its tasks are
    re-auctioned, and the result is exact. (Under edgeci the frozen device cannot bid,
    so it gets no work at all.)"""
    ref = references[("smallcnn", 96, 96)]
    x = ref.x
    with (
        local_cluster(tmp_path, devices=3, models="smallcnn", strategy="aofl") as small,
        EdgeCIClient(small.broker.address("client")) as own,
    ):
        own.infer(x, "smallcnn", timeout=60)  # warm
        victim = small.group.processes["dev-2"]
        with on_traffic(small.broker, [(DEVICE_TASKS.build(device="dev-2"), victim.kill)]) as done:  # once it has work
            victim.send_signal(signal.SIGSTOP)
            result = own.infer(x, "smallcnn", timeout=60)
        assert done, "dev-2 was given no work"
        assert faithful(result.logits, ref.logits32, ref.logits64)
        assert result.timings["recovered_tasks"] >= 1
        assert "dev-2" not in own.infer(x, "smallcnn", timeout=60).devices
        assert faithful(own.infer(x, "smallcnn", timeout=60).logits, ref.logits32, ref.logits64)


def test_watch_shows_the_live_traffic(cluster: LocalCluster, client: EdgeCIClient) -> None:
    """Everything but the clients' own data: the watcher may not read requests or answers."""
    watch = subprocess.Popen(
        [sys.executable, "-m", "edgeci_mqtt", "watch", "--broker", plain_url(cluster), "--duration", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=login_env(cluster, "watcher"),  # never a password in a process's arguments
    )
    assert watch.stdout is not None
    seen = []
    while f"{len(cluster.devices)} device(s) online" not in (line := watch.stdout.readline()):  # subscribed
        assert line, watch.stderr.read() if watch.stderr else "watch exited"
        seen.append(line)
    client.infer(load_input(SAMPLE_IMAGE, 64), "smallcnn", "edgeci", timeout=60)
    while "/results/" not in (line := watch.stdout.readline()) and line:  # the watcher may lag the client
        seen.append(line)
    seen.append(line)
    watch.terminate()
    out = "".join(seen) + watch.communicate(timeout=60)[0]
    expectations = ("ONLINE", "orchestrator o1 ONLINE", "CALL by", "BID from", "AWARD of lot", "program ", "rows ")
    for expected in (*expectations, "float32[1, "):
        assert expected in out, expected
    assert " request " not in out and " response " not in out


def test_a_device_that_joins_is_used_from_the_next_plan(tmp_path: Path, references: References) -> None:
    ref = references[("smallcnn", 96, 96)]
    x = ref.x
    with (
        local_cluster(tmp_path, devices=3, models="smallcnn", strategy="modnn", start=2) as small,
        EdgeCIClient(small.broker.address("client")) as own,
    ):
        assert set(own.infer(x, "smallcnn", timeout=60).devices) == {"dev-1", "dev-2"}
        start_device(small.group, small.broker, "dev-3", "smallcnn")
        wait_for_devices(small.broker, {"dev-1", "dev-2", "dev-3"}, group=small.group)
        small.wait_for_tables({"dev-1", "dev-2", "dev-3"})  # the orchestrator read its birth
        result = own.infer(x, "smallcnn", timeout=60)
        assert set(result.devices) == {"dev-1", "dev-2", "dev-3"} and faithful(
            result.logits, ref.logits32, ref.logits64
        )
        # SIGTERM: the agent announces itself offline and exits cleanly; the next plan leaves it out
        small.group.stop("dev-3")
        assert small.group.processes["dev-3"].returncode == 0 and "dev-3: offline" in small.group.log_text("dev-3")
        small.wait_for_tables({"dev-1", "dev-2"})  # the orchestrator read its goodbye
        assert set(own.infer(x, "smallcnn", timeout=60).devices) == {"dev-1", "dev-2"}


def test_agents_reconnect_and_rebirth_after_a_broker_restart(tmp_path: Path, references: References) -> None:
    ref = references[("smallcnn", 96, 96)]
    x = ref.x
    with local_cluster(tmp_path, devices=2, models="smallcnn", strategy="aofl") as small:
        agents = (*small.devices, *small.orchestrators)

        def sessions() -> dict[str, int]:  # each new session, as the broker logs it
            log = small.broker.log_path.read_text(errors="replace")
            return {agent: log.count(f" as {agent} (") for agent in agents}

        before = sessions()
        small.broker.restart()
        # the births it kept are the old ones: wait for the agents themselves to log in again
        wait_for(lambda: all(n > before[a] for a, n in sessions().items()), 60, "every agent logging in again")
        wait_for_devices(small.broker, {"dev-1", "dev-2"}, group=small.group, timeout=60)
        deadline = time.monotonic() + 60
        with EdgeCIClient(small.broker.address("client")) as own:
            while True:  # the orchestrator reconnects on its own back-off
                try:
                    result = own.infer(x, "smallcnn", timeout=10)
                    break
                except InferenceError:
                    if time.monotonic() > deadline:
                        raise
        assert faithful(result.logits, ref.logits32, ref.logits64) and set(result.devices) == {"dev-1", "dev-2"}


def test_devices_fetch_only_the_weights_of_their_stages(tmp_path: Path, references: References) -> None:
    """Fetching devices start with no weights; the orchestrator sends each stage's weights
    (chunked: a 512-channel convolution is 9.4 MB) before its first task; the classifier
    never reaches a device."""
    cache = tmp_path / "cache"
    ref = references[("vgg16", 224, 224)]
    x = ref.x
    fetch = ("--fetch-weights", "--cache-dir", str(cache))
    with (
        local_cluster(tmp_path / "run", devices=2, models="vgg16", device_args=fetch) as small,
        EdgeCIClient(small.broker.address("client")) as own,
    ):
        for strategy in ("edgeci", "modnn", "edgeci"):
            assert faithful(own.infer(x, "vgg16", strategy, timeout=180).logits, ref.logits32, ref.logits64), strategy
        log = small.group.log_text("dev-1") + small.group.log_text("dev-2")
    cached = {p.stem for p in cache.glob("*/*.msgpack")}
    assert "features.28" in cached and all(name.startswith("features.") for name in cached)
    assert "loaded vgg16 stage features.0" in log and "classifier" not in log


def plain_url(cluster: LocalCluster) -> str:
    return f"mqtt://127.0.0.1:{cluster.broker.port}"


def login_env(cluster: LocalCluster, user: str) -> dict[str, str]:
    """The environment that logs a command in as ``user`` (its password out of ``ps``)."""
    password = cluster.broker.credentials.passwords[user]
    return {**os.environ, "EDGECI_USERNAME": user, "EDGECI_PASSWORD": password}


def test_infer_command_asks_the_cluster(
    cluster: LocalCluster, tmp_path: Path, chains: dict[str, StageChain], chains64: dict[str, StageChain]
) -> None:
    out_file = tmp_path / "logits.npy"
    cluster.broker.add_user("client", "cli-user")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeci_mqtt",
            "infer",
            "--broker",
            plain_url(cluster),
            "--model",
            "smallcnn",
            "--size",
            "64",
            "--strategy",
            "aofl",
            "--output",
            str(out_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=login_env(cluster, "cli-user"),
    )
    assert "strategy aofl" in result.stdout and "latency" in result.stdout and "probability" in result.stdout
    ref = whole_model_reference(chains["smallcnn"], chains64["smallcnn"], load_input(SAMPLE_IMAGE, 64))  # its input
    assert_float32_faithful(torch.from_numpy(np.load(out_file)), ref.logits32, ref.logits64)


@pytest.mark.broker(reason="the demo starts Mosquitto in a subprocess, out of the analysis' sight")
def test_demo_command_runs_a_whole_cluster() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeci_mqtt", "demo", "--models", "smallcnn", "--devices", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("smallcnn")]
    assert [r.split()[1] for r in rows] == list(STRATEGY_NAMES)
    assert "stopping" in result.stderr
