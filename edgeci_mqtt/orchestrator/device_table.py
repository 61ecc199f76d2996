"""The live devices, from their retained state messages.

Every membership change bumps the table's ``generation`` (so that the next request is
re-planned), every birth its ``births`` (so that stage weights sent before a restart are
sent again).
"""

from __future__ import annotations

import logging
import threading

from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.models.held import FETCH
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.wire import DeviceStateMessage

__all__ = ["DeviceTable"]

log = logging.getLogger("edgeci.orchestrator")


class DeviceTable:
    """Live devices from their retained state messages (thread-safe)."""

    def __init__(self) -> None:
        self._live: dict[str, tuple[DeviceStateMessage, DeviceProfile, Link]] = {}  # the state, its profile and link
        self._lock = threading.Lock()
        self.generation = 0
        self.births = 0

    def update(self, state: DeviceStateMessage) -> None:
        profile, link = state.profile, state.link  # typed and checked by the wire
        if state.online and (profile is None or link is None):
            raise WireError(f"device {state.device} is online without a profile and a link")
        with self._lock:
            before = self._live.pop(state.device, None)
            if state.online and profile is not None and link is not None:
                self._live[state.device] = (state, profile, link)
            if state.online and before is None:
                self.births += 1
            if (before is None) != (not state.online) or (before is not None and before[0].models != state.models):
                self.generation += (
                    1  # not for a corrected speed: bids carry it, and planning anew is dear (docs/RUNTIME.md)
                )
                log.info(
                    "device %s is %s (generation %d)",
                    state.device,
                    "online" if state.online else "offline",
                    self.generation,
                )

    def online(self) -> list[str]:
        with self._lock:
            return sorted(self._live)

    def views(self, model: str, digest: str) -> list[DeviceView]:
        """Online devices that hold ``model`` with these weights, or fetch them (a fetching
        device gets the weights of stages only, so no room for the tail's), with the tail
        weights each has made."""
        with self._lock:
            return [
                DeviceView(
                    name,
                    profile,
                    link,
                    memory_bytes=0 if s.models.get(model) == FETCH else s.memory_bytes,
                    tail=s.tails.get(model),
                )
                for name, (s, profile, link) in sorted(self._live.items())
                if s.models.get(model) in (digest, FETCH)
            ]

    def fetches(self, device: str, model: str) -> bool:
        with self._lock:
            live = self._live.get(device)
            return live is not None and live[0].models.get(model) == FETCH

    def cached(self, device: str, digest: str) -> set[str]:
        """Stages of these weights the device announced it has on disk."""
        with self._lock:
            live = self._live.get(device)
            return set(live[0].weights.get(digest, [])) if live is not None else set()
