"""The live devices, from their retained state messages, and the stage weights sent to them.

Every membership change bumps the table's ``generation`` (so that the next request is
re-planned), every birth its ``births``. A device that announces a model as ``FETCH`` holds
none of its weights: before each of its tasks it gets the weights of the block's stages it
lacks, on its tasks topic, so that they arrive before the task (:class:`WeightsSender`).
What was sent is remembered until a birth; then only what the device announced it has on
disk is trusted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.models.held import FETCH, ModelStore
from edgeci_mqtt.models.stage_weights import stage_state, weights_message
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.wire import DEVICE_TASKS, DeviceStateMessage, Message

__all__ = ["DeviceTable", "WeightsSender"]

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
                # not for a corrected speed: bids carry it, and planning anew is dear (docs/RUNTIME.md)
                self.generation += 1
                word = "online" if state.online else "offline"
                log.info("device %s is %s (generation %d)", state.device, word, self.generation)

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

    def on_disk(self, device: str, model: str, digest: str) -> set[str] | None:
        """If ``device`` fetches ``model``: the stages of these weights it announced it has on
        disk (None if it does not fetch them)."""
        with self._lock:
            live = self._live.get(device)
            if live is None or live[0].models.get(model) != FETCH:
                return None
            return set(live[0].weights.get(digest, []))


class WeightsSender:
    """Sends each fetching device the stage weights its work needs, once (thread-safe)."""

    def __init__(self, models: ModelStore, table: DeviceTable, publish: Callable[[str, Message], None]) -> None:
        self.models, self.table, self.publish = models, table, publish
        self._sent: dict[tuple[str, str], tuple[int, set[str]]] = {}  # (device, digest) -> (births, stages)
        self._lock = threading.Lock()

    def send(self, model: str, device: str, block: FusedBlock) -> None:
        """Before ``device``'s task of ``block``: the weights of its stages the device lacks,
        if it fetches ``model``."""
        held = self.models.get(model)
        if (on_disk := self.table.on_disk(device, model, held.digest)) is None:
            return
        key = (device, held.digest)
        with self._lock:  # one worker sends a stage; the others' tasks queue behind it on the topic
            births, sent = self._sent.get(key, (-1, set()))
            if births != self.table.births:  # a (re)birth: trust only what it has on disk
                sent = on_disk
            for stage in held.weighted_stages(block):
                if stage not in sent:
                    message = weights_message(model, held.digest, stage, stage_state(held.chain.model, stage))
                    self.publish(DEVICE_TASKS.build(device=device), message)
                    sent.add(stage)
            self._sent[key] = (self.table.births, sent)
