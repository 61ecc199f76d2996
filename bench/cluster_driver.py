"""Runs inside the broker host's namespace: reads the device table, then times inferences.

Warm-up runs first, then ``--runs`` rounds in which every strategy runs once, in an order
rotated each round, so slow drifts (thermal, caches) hit all strategies alike. Writes one
JSON file with every run and the devices' published profiles and links.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time

from edgeci_mqtt.errors import WireError
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.runtime.client import EdgeCIClient
from edgeci_mqtt.runtime.transport import BrokerAddress, Connection, Inbound
from edgeci_mqtt.wire import DeviceState, Topics, decode


def device_states(url: str, count: int, timeout: float = 30.0) -> dict[str, dict[str, object]]:
    watcher = Connection(BrokerAddress.parse(url), f"bench-watcher-{int(time.time())}")
    watcher.subscribe(Topics.device_states)
    watcher.start()
    states: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(states) < count and time.monotonic() < deadline:
            try:
                event = watcher.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(event, Inbound):
                try:
                    state = decode(event.payload, DeviceState)
                except WireError:
                    continue
                assert isinstance(state, DeviceState)
                if state.online:
                    states[state.device] = {"profile": state.profile, "link": state.link}
    finally:
        watcher.stop()
    return states


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", required=True)
    parser.add_argument("--watcher", required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--models", default="vgg16,resnet34")
    parser.add_argument("--strategies", default="local,modnn,deepthings,aofl,edgeci")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    strategies = args.strategies.split(",")
    result: dict[str, object] = {"devices": device_states(args.watcher, args.devices), "runs": {}}
    x = load_input(SAMPLE_IMAGE)
    with EdgeCIClient(BrokerAddress.parse(args.client), client_id=f"bench-{int(time.time())}") as client:
        for model in args.models.split(","):
            runs: dict[str, list[dict[str, object]]] = {s: [] for s in strategies}
            for round_index in range(args.warmup + args.runs):
                order = strategies[round_index % len(strategies) :] + strategies[: round_index % len(strategies)]
                for strategy in order:
                    answer = client.infer(x, model, strategy, timeout=600, trace=True)
                    print(
                        f"{model} {strategy} round {round_index}: {answer.latency_s * 1e3:.0f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
                    if round_index >= args.warmup:
                        runs[strategy].append(
                            {
                                "latency_s": answer.latency_s,
                                "timings": answer.timings,
                                "devices": answer.devices,
                                "timeline": [i.to_row() for i in answer.timeline],
                            }
                        )
            result["runs"][model] = runs  # type: ignore[index]
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
