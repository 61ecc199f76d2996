"""Runs inside the broker host's namespace: times inferences, then reads the device table.

Warm-up runs first, then ``--runs`` rounds in which every strategy runs once, in an order
rotated each round, so slow drifts (thermal, caches) hit all strategies alike. Writes one
JSON file with every run and the profiles and links the devices announce after the runs
(corrected by the work they did: see :mod:`edgeci_mqtt.planner.calibration`).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from edgeci_mqtt.broker.config import Credentials, credentials_path
from edgeci_mqtt.bus.address import BrokerAddress
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.client import EdgeCIClient
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models import model_size
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES
from edgeci_mqtt.watch.view import device_states


def logged_in(url: str, credentials: Path | None) -> BrokerAddress:
    """``mqtt://user@host:port`` with the user's password from its credentials file under
    ``credentials`` (the broker's configuration directory): never a password in argv."""
    address = BrokerAddress.parse(url)
    if credentials is None or address.password or not address.username:
        return address
    user = address.username
    return address.with_login(user, Credentials.load(credentials_path(credentials, user)).passwords[user])


def published_states(address: BrokerAddress, count: int, timeout: float = 30.0) -> dict[str, dict[str, object]]:
    """The profiles and links the devices announce now, for the report and the simulator."""
    watcher = MqttBus(address)
    states = device_states(watcher, lambda online: len(online) >= count, timeout)
    return {
        name: {"profile": s.profile.to_dict() if s.profile else {}, "link": s.link.to_dict() if s.link else {}}
        for name, s in states.items()
    }


def link_bytes(interface: str) -> tuple[int, int]:
    """Bytes the broker host has received from and sent to the devices so far (the link's
    own counters: every byte a strategy moves through the broker, headers included)."""
    stats = Path("/sys/class/net") / interface / "statistics"
    return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())


def stream(address: BrokerAddress, model: str, strategy: str, count: int, in_flight: int) -> dict[str, object]:
    """``count`` requests, ``in_flight`` at a time (threads sharing one client session), as a
    stream would come: every latency, the wall time, and how many were served whole on one device."""
    x = load_input(SAMPLE_IMAGE, model_size(model))
    latencies: list[float] = []
    whole: list[float] = []
    failures: list[str] = []
    left = list(range(count))
    lock = threading.Lock()

    def client(own: EdgeCIClient) -> None:
        while True:
            with lock:
                if not left:
                    return
                left.pop()
            try:
                answer = own.infer(x, model, strategy, timeout=600, size=model_size(model))
            except Exception as exc:  # a failed request is counted, not fatal to the run
                with lock:
                    failures.append(str(exc)[:200])
                continue
            with lock:
                latencies.append(answer.latency_s)
                whole.append(answer.timings.get("whole_request", 0.0))

    with EdgeCIClient(address) as shared:
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(shared,)) for _ in range(in_flight)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    print(f"{model} {strategy} stream: {count} in {wall:.1f} s", file=sys.stderr, flush=True)
    return {"latencies_s": latencies, "wall_s": wall, "whole": sum(whole), "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", required=True, help="mqtt://user@host:port")
    parser.add_argument("--watcher", required=True)
    parser.add_argument("--stream-client", help="a second client login, for the streams (default: --client)")
    parser.add_argument(
        "--credentials", type=Path, help="the broker's configuration directory (its credentials/ hold the passwords)"
    )
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--models", default="vgg16,resnet34")
    parser.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    parser.add_argument("--link", required=True, help="the broker host's interface to the devices")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stream", type=int, default=0, help="requests per stream (0: no streams)")
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--stream-models", default="vgg16")
    parser.add_argument("--stream-strategies", default="local,replicas,edgeci,flow")
    args = parser.parse_args()
    own, watcher = logged_in(args.client, args.credentials), logged_in(args.watcher, args.credentials)
    streams = logged_in(args.stream_client, args.credentials) if args.stream_client else own
    strategies = args.strategies.split(",")
    result: dict[str, object] = {"runs": {}}
    with EdgeCIClient(own) as client:
        for model in args.models.split(","):
            x = load_input(SAMPLE_IMAGE, model_size(model))
            runs: dict[str, list[dict[str, object]]] = {s: [] for s in strategies}
            for round_index in range(args.warmup + args.runs):
                order = strategies[round_index % len(strategies) :] + strategies[: round_index % len(strategies)]
                for strategy in order:
                    before = link_bytes(args.link)
                    answer = client.infer(x, model, strategy, timeout=600, trace=True, size=model_size(model))
                    after = link_bytes(args.link)
                    print(
                        f"{model} {strategy} round {round_index}: {answer.latency_s * 1e3:.0f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
                    if round_index >= args.warmup:
                        runs[strategy].append(
                            {
                                "latency_s": answer.latency_s,
                                "broker_in_bytes": after[0] - before[0],
                                "broker_out_bytes": after[1] - before[1],
                                "timings": answer.timings,
                                "devices": answer.devices,
                                "timeline": [i.to_row() for i in answer.timeline],
                            }
                        )
            result["runs"][model] = runs  # type: ignore[index]
            # read after each model's runs: a device corrects its announced speed by the work it did
            by_model = result.setdefault("devices_by_model", {})
            by_model[model] = result["devices"] = published_states(watcher, args.devices)  # type: ignore[index]
    if args.stream:
        result["streams"] = {
            model: {
                strategy: stream(streams, model, strategy, args.stream, args.in_flight)
                for strategy in args.stream_strategies.split(",")
            }
            for model in args.stream_models.split(",")
        }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
