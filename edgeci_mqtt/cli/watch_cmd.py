"""``edgeci watch``: a live, decoded view of everything on the broker."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from edgeci_mqtt.bus.protocol import Connected, Inbound, events_until
from edgeci_mqtt.cli.device_cmd import stop_on_signals
from edgeci_mqtt.cli.runtime_args import add_broker, broker_bus
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.watch.view import TrafficView
from edgeci_mqtt.wire import WatcherStateMessage, encode
from edgeci_mqtt.wire.topics import WATCHER_STATE

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "watch",
        help="show live traffic, decoded",
        description="Subscribe to everything the watcher user may read and print one line per message: device "
        "births and wills, auction calls, bids and awards, and (reported by their senders while a watcher is "
        "online, since the watcher reads no client data) programs, tasks, rows and results with sizes and "
        "latencies; tensors as dtype/shape/bytes; other traffic raw. The device table is printed when it changes.",
    )
    add_broker(parser)
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    parser.set_defaults(run=run)


ANNOUNCE_S = 20.0
"""How often the watcher says again that it is online (devices and orchestrators forget a
watcher not heard of for :data:`~edgeci_mqtt.watch.traffic.WATCHER_TTL_S`)."""


def run(args: argparse.Namespace) -> int:
    """Announce ourselves (retained, with an offline will) so that devices and orchestrators
    report the metadata of their data messages while we watch: the watcher role reads no
    client data, only those reports and the metadata topics."""
    bus = broker_bus(args, "watcher")
    state = WATCHER_STATE.build(watcher=bus.client_id)
    bus.will(state, encode(WatcherStateMessage(bus.client_id, False)))
    bus.subscribe("#", qos=0)
    bus.start()
    view, stop = TrafficView(), stop_on_signals()
    deadline = None if args.duration is None else time.perf_counter() + args.duration
    announce_at = time.perf_counter()
    try:
        while not stop.is_set() and (deadline is None or time.perf_counter() < deadline):
            if time.perf_counter() >= announce_at:
                bus.publish(state, encode(WatcherStateMessage(bus.client_id, True)), retain=True)
                announce_at = time.perf_counter() + ANNOUNCE_S
            until = announce_at if deadline is None else min(announce_at, deadline)
            for event in events_until(bus, stop, until):
                if isinstance(event, Connected):  # a new session: the broker may have fired our will
                    announce_at = time.perf_counter()
                    break
                if not isinstance(event, Inbound):
                    continue
                before = set(view.devices)
                for line in view.feed(event.topic, event.payload, time.monotonic()):
                    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
                if set(view.devices) != before:
                    print(view.table(), flush=True)
    finally:
        with contextlib.suppress(EdgeCIError):
            bus.publish(state, encode(WatcherStateMessage(bus.client_id, False)), retain=True, wait=2.0)
        bus.stop()
        print(view.table(), file=sys.stderr)
    return 0
