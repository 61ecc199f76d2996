"""On the real broker: the watcher receives no byte of client data, and ``edgeci watch``
still names every program, rows message and result of the requests it watched."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.bus.protocol import Inbound, events_until
from edgeci_mqtt.client import EdgeCIClient
from edgeci_mqtt.wire import WatcherStateMessage, decode
from edgeci_mqtt.wire.topics import TOPICS, WATCHER_STATE
from tests.cluster import local_cluster
from tests.exactness import References, assert_float32_faithful

pytestmark = pytest.mark.broker

REQUESTS = 3


def finished(lines: list[str]) -> set[str]:
    """The requests whose results (rows, vectors or logits) reached an orchestrator."""
    return {line.split("/results/")[1].split()[0] for line in lines if "/results/" in line}


def test_the_watcher_gets_no_client_data_and_watch_still_shows_each_request(
    tmp_path: Path, references: References
) -> None:
    ref = references[("smallcnn", 64, 64)]
    image = ref.x.numpy()
    rows = {image[0, c, i].tobytes() for c in range(image.shape[1]) for i in range(image.shape[2])}
    data = [t for t in TOPICS if t.data]
    with (
        local_cluster(tmp_path, devices=2, models="smallcnn", strategy="flow") as cluster,
        EdgeCIClient(cluster.broker.address("client")) as client,
    ):
        spy = MqttBus(cluster.broker.add_user("watcher", "spy"))  # a second watcher, reading all it may
        spy.subscribe("#", qos=0)
        spy.start()
        watch = subprocess.Popen(
            [sys.executable, "-m", "edgeci_mqtt", "watch", "--broker", cluster.broker.url("watcher"),
             "--duration", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert watch.stdout is not None
            while "watcher watcher ONLINE" not in (line := watch.stdout.readline()):  # announced: the agents read it
                assert line, watch.stderr.read() if watch.stderr else "watch exited"
            for _ in range(REQUESTS):  # the ablation always splits, and sends rows raw
                result = client.infer(ref.x, "smallcnn", "flow:raw", timeout=60)
                assert_float32_faithful(result.logits, ref.logits32, ref.logits64, "watched")
            lines: list[str] = []
            # Each sender reports in batches of its own (every 200 ms): the devices' reports of
            # the last results may come before the orchestrator's of the last programs.
            while len(finished(lines)) < REQUESTS or "".join(lines).count("  program ") < REQUESTS:
                line = watch.stdout.readline()
                assert line, "".join(lines)
                lines.append(line)
            received: list[Inbound] = []
            deadline = time.perf_counter() + 1.0
            received += [e for e in events_until(spy, deadline=deadline, poll_s=0.1) if isinstance(e, Inbound)]
        finally:
            watch.terminate()
            watch.communicate(timeout=60)
            spy.stop()
    on_data = [e.topic for e in received if any(t.parse(e.topic) is not None for t in data)]
    assert on_data == [], "the watcher read client data"
    assert not any(row in e.payload for e in received for row in rows), "an image row reached the watcher"
    text = "".join(lines)
    assert text.count("  program ") >= REQUESTS and "of boundary 0 float32[1, 3, " in text, text
    assert "  rows " in text and " as raw " in text, text  # (smallcnn is one block: its rows go to the orchestrator)
    assert "INVALID" not in text, text
    states = [decode(e.payload) for e in received if WATCHER_STATE.parse(e.topic) is not None]
    assert WatcherStateMessage("watcher", True) in states
