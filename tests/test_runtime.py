"""End to end over a real Mosquitto with real agent and orchestrator processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from edgeci_mqtt.cli.demo_cmd import wait_for_devices
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.planner.strategies import STRATEGIES
from edgeci_mqtt.runtime.client import EdgeCIClient, InferenceError, InferenceResult
from edgeci_mqtt.runtime.models_held import weights_digest
from edgeci_mqtt.runtime.transport import Connection
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval
from edgeci_mqtt.wire import (
    MAX_PAYLOAD_BYTES,
    AuctionCall,
    Chunk,
    DeviceState,
    TaskMessage,
    Topics,
    WeightsMessage,
    encode,
    encode_tensor,
)
from tests.cluster import LocalCluster, collect, local_cluster, start_device
from tests.planning import flat_profile

MODELS = "smallcnn,vgg16,resnet34"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster"), devices=3, models=MODELS, orchestrators=2) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[EdgeCIClient]:
    with EdgeCIClient(cluster.broker.address("client"), client_id="test-client") as connected:
        yield connected


def exact(result: InferenceResult, chain: StageChain, x: torch.Tensor) -> bool:
    with torch.inference_mode():
        return torch.allclose(result.logits, chain.model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model", MODELS.split(","))
def test_every_strategy_gives_the_local_result(
    cluster: LocalCluster, client: EdgeCIClient, chains: dict[str, StageChain], model: str
) -> None:
    x = load_input(SAMPLE_IMAGE, 64 if model == "smallcnn" else 224)
    for strategy in STRATEGIES:
        result = client.infer(x, model, strategy, timeout=180)
        assert exact(result, chains[model], x), (model, strategy)
        assert result.strategy == strategy and result.orchestrator in cluster.orchestrators
        assert result.devices, "the devices did the work"


@pytest.mark.parametrize("strategy", ["deepthings", "edgeci"])
def test_a_traced_request_returns_the_measured_timeline(
    client: EdgeCIClient, chains: dict[str, StageChain], strategy: str
) -> None:
    x = load_input(SAMPLE_IMAGE, 64)
    untraced = client.infer(x, "smallcnn", strategy, timeout=60)
    assert untraced.timeline == ()
    result = client.infer(x, "smallcnn", strategy, timeout=60, trace=True)
    assert exact(result, chains["smallcnn"], x)
    by_kind: dict[str, list[Interval]] = {}
    for interval in result.timeline:
        assert 0.0 <= interval.start <= interval.end <= result.latency_s, interval
        by_kind.setdefault(interval.kind, []).append(interval)
    orchestrator = {i.kind for i in result.timeline if i.resource == ORCHESTRATOR}
    assert {"plan", "prepare", "merge", "tail"} <= orchestrator
    assert ("auction" in orchestrator) == (strategy == "edgeci")
    # every task: sent, received, computed and returned by a device that did the work, in that order
    tasks = len(by_kind["prepare"])
    assert len(by_kind["receive"]) == len(by_kind["compute"]) == len(by_kind["send"]) == len(by_kind["merge"]) == tasks
    assert {i.resource for i in by_kind["compute"]} == set(result.devices)
    for down, work, up in zip(by_kind["receive"], by_kind["compute"], by_kind["send"], strict=True):
        assert down.resource == work.resource == up.resource and down.label == work.label == up.label
        assert down.end <= work.start <= work.end <= up.start
    assert max(i.end for i in result.timeline) <= result.timings["total_s"]


def test_two_orchestrators_share_concurrent_requests(cluster: LocalCluster, chains: dict[str, StageChain]) -> None:
    x = load_input(SAMPLE_IMAGE, 64)
    results: list[InferenceResult] = []

    def ask(index: int) -> None:
        with EdgeCIClient(cluster.broker.address("client"), client_id=f"parallel-{index}") as own:
            for _ in range(3):
                results.append(own.infer(x, "smallcnn", timeout=60))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 9 and all(exact(r, chains["smallcnn"], x) for r in results)
    assert {r.orchestrator for r in results} == set(cluster.orchestrators)


def test_device_credentials_cannot_publish_as_another_device_or_award(cluster: LocalCluster) -> None:
    watcher = Connection(cluster.broker.address("watcher"), "acl-watcher")
    watcher.subscribe(Topics.all)
    watcher.start()
    intruder = Connection(cluster.broker.address("dev-1"), "acl-intruder")
    intruder.start()
    try:
        collect(watcher, 0.5)  # retained states
        intruder.publish(Topics.device_tasks("dev-2"), b"forged task", wait=2)
        intruder.publish(Topics.auction_award("forged"), b"forged award", wait=2)
        intruder.publish(Topics.auction_bids("forged", "dev-2"), b"forged bid", wait=2)
        intruder.publish(Topics.auction_bids("fine", "dev-1"), b"own bid", wait=2)  # allowed: a control
        seen = {m.topic for m in collect(watcher, 1.5)}
    finally:
        intruder.stop()
        watcher.stop()
    assert Topics.auction_bids("fine", "dev-1") in seen
    assert not seen & {
        Topics.device_tasks("dev-2"),
        Topics.auction_award("forged"),
        Topics.auction_bids("forged", "dev-2"),
    }


def test_hostile_messages_change_nothing(
    cluster: LocalCluster, client: EdgeCIClient, chains: dict[str, StageChain], tmp_path: Path
) -> None:
    tile = encode_tensor(torch.zeros(1, 3, 4, 4))
    wrong_bytes = dict(tile, data=tile["data"][:-4])
    unknown_dtype = dict(tile, dtype="complex64")
    digest = weights_digest("smallcnn", None, 0)
    task = TaskMessage("q", "t", "o1", "smallcnn", digest, [64, 64], [0, 1], [0, 4, 0, 4], [0, 2, 0, 2], tile)
    payloads = [
        b"\x00\xffgarbage",
        encode(DeviceState("dev-9", True))[:-3],
        encode(DeviceState("dev-1", True)).replace(b"\xa1v\x01", b"\xa1v\x09"),  # wrong schema version
        encode(TaskMessage(**{**task.__dict__, "input": wrong_bytes})),
        encode(TaskMessage(**{**task.__dict__, "input": unknown_dtype})),
        encode(TaskMessage(**{**task.__dict__, "block": [5, 2]})),
        encode(TaskMessage(**{**task.__dict__, "digest": "not-our-weights"})),
        encode(Chunk("c", 0, 10**9, b"x")),
        encode(WeightsMessage("smallcnn", digest, "features.0", {"weight": tile}, "0" * 64)),
        msgpack.packb({b"binary": 1}, use_bin_type=True),
        encode(AuctionCall("huge", "o1", "smallcnn", [2**36, 8], [0, 1], [[0, 1]], 100.0)),
    ]
    bad_link = DeviceState("dev-9", True, flat_profile().to_dict(), {"bandwidth_mbit": 0, "latency_ms": 1}, {})
    oversize = tmp_path / "oversize.bin"  # over our frame limit, under the broker's packet limit
    oversize.write_bytes(b"\x01" * (MAX_PAYLOAD_BYTES + 20_000))
    topics = [Topics.device_tasks(d) for d in cluster.devices] + [
        Topics.auction_call("hostile"),
        Topics.auction_bids("hostile", "dev-1"),
        Topics.results("o1"),
        Topics.results("o2"),
        Topics.requests,
    ]
    attacker = Connection(cluster.broker.address("orchestrator"), "hostile")
    attacker.start()
    try:
        attacker.publish(Topics.device_state("dev-9"), encode(bad_link), wait=5)
        for topic in topics:
            for payload in payloads:
                attacker.publish(topic, payload, qos=1, wait=5)
            # a raw frame, not split by our transport: the real mosquitto_pub
            subprocess.run(
                [
                    "mosquitto_pub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(cluster.broker.port),
                    "-u",
                    "orchestrator",
                    "-P",
                    cluster.broker.credentials.passwords["orchestrator"],
                    "-q",
                    "1",
                    "-t",
                    topic,
                    "-f",
                    str(oversize),
                ],
                check=True,
                timeout=30,
            )
    finally:
        attacker.stop()
    time.sleep(1.0)
    for name in (*cluster.devices, *cluster.orchestrators):
        assert cluster.group.processes[name].poll() is None, f"{name} died:\n{cluster.group.log_text(name)}"
    x = load_input(SAMPLE_IMAGE, 64)
    for strategy in ("edgeci", "deepthings"):
        assert exact(client.infer(x, "smallcnn", strategy, timeout=60), chains["smallcnn"], x)
    device_log = cluster.group.log_text("dev-1")
    assert "rejected" in device_log and "Traceback" not in device_log
    for complaint in (
        "unknown dtype 'complex64'",
        "needs 192 bytes",
        "not msgpack",
        "unknown schema version 9",
        "out of range",
        "frame limit",
        "is not ours",
        "expected [start, stop)",
    ):
        assert complaint in device_log, complaint
    orchestrator_log = cluster.group.log_text("o1") + cluster.group.log_text("o2")
    assert "rejected message" in orchestrator_log and "Traceback" not in orchestrator_log
    assert "not a positive bandwidth" in orchestrator_log


def test_errors_reach_the_client(client: EdgeCIClient) -> None:
    with pytest.raises(InferenceError, match="not held here"):
        client.infer(torch.zeros(1, 3, 64, 64), "alexnet", timeout=30)
    with pytest.raises(InferenceError, match="takes 3 input channels"):
        client.infer(torch.zeros(1, 4, 64, 64), "smallcnn", timeout=30)
    with pytest.raises(InferenceError, match="too small"):
        client.infer(torch.zeros(1, 3, 8, 8), "vgg16", timeout=30)


@pytest.mark.parametrize("strategy", ["aofl", "edgeci"])
def test_a_device_killed_mid_inference(tmp_path: Path, chains: dict[str, StageChain], strategy: str) -> None:
    """dev-2 freezes, then is killed while holding work: its will fires, its tasks are
    re-auctioned, and the result is exact. (Under edgeci the frozen device cannot bid,
    so it gets no work at all.)"""
    x = load_input(SAMPLE_IMAGE, 96)
    with (
        local_cluster(tmp_path, devices=3, models="smallcnn", strategy=strategy) as small,
        EdgeCIClient(small.broker.address("client")) as own,
    ):
        own.infer(x, "smallcnn", timeout=60)  # warm
        victim = small.group.processes["dev-2"]
        victim.send_signal(signal.SIGSTOP)
        killer = threading.Timer(1.0, victim.kill)
        killer.start()
        try:
            result = own.infer(x, "smallcnn", timeout=60)
        finally:
            killer.join()
        assert exact(result, chains["smallcnn"], x)
        if strategy == "aofl":
            assert result.timings["recovered_tasks"] >= 1
        assert "dev-2" not in own.infer(x, "smallcnn", timeout=60).devices
        assert exact(own.infer(x, "smallcnn", timeout=60), chains["smallcnn"], x)


def test_a_silent_device_is_replaced_after_its_deadline(tmp_path: Path, chains: dict[str, StageChain]) -> None:
    x = load_input(SAMPLE_IMAGE, 96)
    with (
        local_cluster(tmp_path, devices=2, models="smallcnn", strategy="modnn") as small,
        EdgeCIClient(small.broker.address("client")) as own,
    ):
        own.infer(x, "smallcnn", timeout=60)
        small.group.processes["dev-1"].send_signal(signal.SIGSTOP)
        try:
            result = own.infer(x, "smallcnn", timeout=120)
        finally:
            small.group.processes["dev-1"].send_signal(signal.SIGCONT)
        assert exact(result, chains["smallcnn"], x) and result.timings["recovered_tasks"] >= 1
        # dev-1 wakes up and delivers its late result: ignored; the next inference is exact
        time.sleep(1.0)
        assert exact(own.infer(x, "smallcnn", timeout=60), chains["smallcnn"], x)


def test_the_auction_does_not_wait_for_a_device_the_plan_leaves_idle(
    tmp_path: Path, chains: dict[str, StageChain]
) -> None:
    """A ghost device that announces itself but never bids: far too slow to be given work,
    it must not hold every auction to the end of its window."""
    x = load_input(SAMPLE_IMAGE, 64)
    window_s = 4.0
    with (
        local_cluster(
            tmp_path, devices=2, models="smallcnn", orchestrator_args=("--auction-ms", str(window_s * 1e3))
        ) as small,
        EdgeCIClient(small.broker.address("client")) as own,
    ):
        ghost = DeviceState(
            "dev-9",
            True,
            flat_profile(gflops=1e-4).to_dict(),
            {"bandwidth_mbit": 1.0, "latency_ms": 50.0},
            {"smallcnn": weights_digest("smallcnn", None, 0)},
        )
        announcer = Connection(small.broker.address("orchestrator"), "announcer")
        announcer.start()
        try:
            announcer.publish(Topics.device_state("dev-9"), encode(ghost), qos=1, retain=True, wait=5)
        finally:
            announcer.stop()
        time.sleep(0.5)
        result = own.infer(x, "smallcnn", "edgeci", timeout=60, trace=True)
        assert exact(result, chains["smallcnn"], x) and "dev-9" not in result.devices
        assert result.timings["auction_s"] < window_s / 4, result.timings
        auction = [i for i in result.timeline if i.kind == "auction"]
        assert auction and "dev-9" not in {i.resource for i in result.timeline}


def test_watch_shows_the_live_traffic(cluster: LocalCluster, client: EdgeCIClient) -> None:
    watch = subprocess.Popen(
        [sys.executable, "-m", "edgeci_mqtt", "watch", "--broker", cluster.broker.url("watcher"), "--duration", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    client.infer(load_input(SAMPLE_IMAGE, 64), "smallcnn", "edgeci", timeout=60)
    out, _ = watch.communicate(timeout=60)
    for expected in ("ONLINE", "CALL by", "BID from", "AWARD:", "task ", "float32[1, ", "compute ", "response "):
        assert expected in out, expected


def test_a_device_that_joins_is_used_from_the_next_plan(tmp_path: Path, chains: dict[str, StageChain]) -> None:
    x = load_input(SAMPLE_IMAGE, 96)
    with (
        local_cluster(tmp_path, devices=3, models="smallcnn", strategy="modnn", start=2) as small,
        EdgeCIClient(small.broker.address("client")) as own,
    ):
        assert set(own.infer(x, "smallcnn", timeout=60).devices) == {"dev-1", "dev-2"}
        start_device(small.group, small.broker, "dev-3", "smallcnn")
        wait_for_devices(small.broker, {"dev-1", "dev-2", "dev-3"}, group=small.group)
        time.sleep(0.5)
        result = own.infer(x, "smallcnn", timeout=60)
        assert set(result.devices) == {"dev-1", "dev-2", "dev-3"} and exact(result, chains["smallcnn"], x)
        # SIGTERM: the agent announces itself offline and exits cleanly; the next plan leaves it out
        small.group.stop("dev-3")
        assert small.group.processes["dev-3"].returncode == 0 and "dev-3: offline" in small.group.log_text("dev-3")
        time.sleep(0.5)
        assert set(own.infer(x, "smallcnn", timeout=60).devices) == {"dev-1", "dev-2"}


def test_agents_reconnect_and_rebirth_after_a_broker_restart(tmp_path: Path, chains: dict[str, StageChain]) -> None:
    x = load_input(SAMPLE_IMAGE, 96)
    with local_cluster(tmp_path, devices=2, models="smallcnn", strategy="aofl") as small:
        small.broker.restart()
        time.sleep(1.0)
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
        assert exact(result, chains["smallcnn"], x) and set(result.devices) == {"dev-1", "dev-2"}


def test_devices_fetch_only_the_weights_of_their_stages(tmp_path: Path, chains: dict[str, StageChain]) -> None:
    """Fetching devices start with no weights; the orchestrator sends each stage's weights
    (chunked: a 512-channel convolution is 9.4 MB) before its first task; the classifier
    never reaches a device."""
    cache = tmp_path / "cache"
    x = load_input(SAMPLE_IMAGE)
    fetch = ("--fetch-weights", "--cache-dir", str(cache))
    with (
        local_cluster(tmp_path / "run", devices=2, models="vgg16", device_args=fetch) as small,
        EdgeCIClient(small.broker.address("client")) as own,
    ):
        for strategy in ("edgeci", "modnn", "edgeci"):
            assert exact(own.infer(x, "vgg16", strategy, timeout=180), chains["vgg16"], x), strategy
        log = small.group.log_text("dev-1") + small.group.log_text("dev-2")
    cached = {p.stem for p in cache.glob("*/*.msgpack")}
    assert "features.28" in cached and all(name.startswith("features.") for name in cached)
    assert "loaded vgg16 stage features.0" in log and "classifier" not in log


def test_infer_command_asks_the_cluster(cluster: LocalCluster, tmp_path: Path, chains: dict[str, StageChain]) -> None:
    out_file = tmp_path / "logits.npy"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeci_mqtt",
            "infer",
            "--broker",
            cluster.broker.url("client"),
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
    )
    assert "strategy aofl" in result.stdout and "latency" in result.stdout and "probability" in result.stdout
    with torch.inference_mode():
        expected = chains["smallcnn"].model(load_input(SAMPLE_IMAGE, 64))
    assert torch.allclose(torch.from_numpy(np.load(out_file)), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.broker  # the demo starts Mosquitto in a subprocess, out of tests/tiers.py's sight
def test_demo_command_runs_a_whole_cluster() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeci_mqtt", "demo", "--models", "smallcnn", "--devices", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("smallcnn")]
    assert [r.split()[1] for r in rows] == list(STRATEGIES)
    assert "stopping" in result.stderr
