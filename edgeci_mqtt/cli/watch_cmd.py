"""``edgeci watch``: a live, decoded view of everything on the broker."""

from __future__ import annotations

import argparse
import sys
import time

from edgeci_mqtt.cli.device_cmd import stop_on_signals
from edgeci_mqtt.cli.runtime_args import add_broker, broker_bus
from edgeci_mqtt.runtime.bus import Inbound, events_until
from edgeci_mqtt.runtime.watch import TrafficView

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "watch",
        help="show live traffic, decoded",
        description="Subscribe to everything (as the watcher user) and print one line per message: device births "
        "and wills, auction calls, bids and awards, tasks and results with sizes and latencies, requests and "
        "responses; tensors as dtype/shape/bytes; other traffic raw. The device table is printed when it changes.",
    )
    add_broker(parser)
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    bus = broker_bus(args, "watcher")
    bus.subscribe("#", qos=0)
    bus.start()
    view, stop = TrafficView(), stop_on_signals()
    deadline = None if args.duration is None else time.perf_counter() + args.duration
    try:
        for event in events_until(bus, stop, deadline):
            if not isinstance(event, Inbound):
                continue
            before = set(view.devices)
            line = view.feed(event.topic, event.payload, time.monotonic())
            if line is not None:
                print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
            if set(view.devices) != before:
                print(view.table(), flush=True)
    finally:
        bus.stop()
        print(view.table(), file=sys.stderr)
    return 0
