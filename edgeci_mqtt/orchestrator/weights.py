"""Stage weights for devices that fetch them, sent ahead of their work.

A device that announces a model as ``FETCH`` holds none of its weights: before each of its
tasks it gets the weights of the block's stages it lacks, on its tasks topic, so that they
arrive before the task. What was sent is remembered by device and weights until the device
is born again; then only what it announced it has on disk is trusted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.models.stage_weights import stage_state, weights_message
from edgeci_mqtt.orchestrator.device_table import DeviceTable
from edgeci_mqtt.wire import DEVICE_TASKS, encode

__all__ = ["WeightsSender"]


class WeightsSender:
    """Sends each fetching device the stage weights its work needs, once (thread-safe)."""

    def __init__(self, models: ModelStore, table: DeviceTable, publish: Callable[[str, bytes], None]) -> None:
        self.models, self.table, self.publish = models, table, publish
        self._sent: dict[tuple[str, str], tuple[int, set[str]]] = {}  # (device, digest) -> (births, stages)
        self._lock = threading.Lock()

    def send(self, model: str, device: str, block: FusedBlock) -> None:
        """Before ``device``'s task of ``block``: the weights of its stages the device lacks,
        if it fetches ``model``."""
        if not self.table.fetches(device, model):
            return
        held = self.models.get(model)
        key = (device, held.digest)
        with self._lock:  # one worker sends a stage; the others' tasks queue behind it on the topic
            births, sent = self._sent.get(key, (-1, set()))
            if births != self.table.births:  # a (re)birth: trust only what it has on disk
                sent = self.table.cached(device, held.digest)
            for stage in held.weighted_stages(block):
                if stage not in sent:
                    message = weights_message(model, held.digest, stage, stage_state(held.chain.model, stage))
                    self.publish(DEVICE_TASKS.build(device=device), encode(message))
                    sent.add(stage)
            self._sent[key] = (self.table.births, sent)
