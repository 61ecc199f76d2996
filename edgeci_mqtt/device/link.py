"""A device measures its own link through the broker at boot."""

from __future__ import annotations

import logging
import time

from edgeci_mqtt.bus.protocol import Bus, Inbound, events_until
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.wire import DEVICE_PROBE

__all__ = ["measure_link"]

log = logging.getLogger("edgeci.device")

ASSUMED = Link(100.0, 1.0)
"""The link a device assumes when the broker does not answer its probe."""


def measure_link(bus: Bus, device: str) -> Link:
    """Round trips through the broker to the device's own probe topic: small for latency,
    256 KiB for bandwidth (both directions cross its link)."""
    topic = DEVICE_PROBE.build(device=device)

    def round_trip(size: int) -> float:
        started = time.perf_counter()
        bus.publish(topic, bytes(size), qos=0)
        for event in events_until(bus, deadline=started + 5.0, poll_s=0.1):
            if isinstance(event, Inbound) and event.topic == topic and len(event.payload) == size:
                return time.perf_counter() - started
        raise EdgeCIError("no answer from the broker to the link probe")

    try:
        small = min(round_trip(16) for _ in range(3))
        big_size = 256 * 1024
        big = min(round_trip(big_size) for _ in range(2))
    except EdgeCIError as exc:
        log.warning("%s: %s; assuming 100 Mbit/s and 1 ms", device, exc)
        return ASSUMED
    seconds = max(big - small, 1e-6)
    link = Link(min(10_000.0, 2 * big_size * 8 / seconds / 1e6), max(small / 2 * 1e3, 0.01))
    log.info("%s: link %.0f Mbit/s, %.2f ms", device, link.bandwidth_mbit, link.latency_ms)
    return link
