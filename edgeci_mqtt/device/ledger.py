"""The one owner of the stage weights a fetching device holds, is fetching, and has installed.

A device that fetches its weights from the orchestrator books a stage as held the moment
its weights message arrives (the message loop validates programs in order, and the worker
installs the weights before it runs any step queued after them); the worker then
verifies, caches and materialises them, and un-books them if they are bad, so that a step
needing them fails with a clear error instead of computing with the wrong numbers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.models.held import HeldModel, ModelStore
from edgeci_mqtt.models.stage_weights import WeightCache, checked_stage, materialise, verify
from edgeci_mqtt.wire import WeightsMessage

__all__ = ["WeightsJob", "WeightsLedger"]

log = logging.getLogger("edgeci.device")


@dataclass(frozen=True)
class WeightsJob:
    """Weights of one stage for the worker: from the wire (to verify and cache) or from the cache."""

    held: HeldModel
    digest: str
    stage: str
    message: WeightsMessage | None  # None: load it from the cache


class WeightsLedger:
    """Which stage weights are held (booked), and which are installed; ``queue(job)`` hands
    the worker the weights to install."""

    def __init__(
        self, device: str, models: ModelStore, cache: WeightCache | None, queue: Callable[[WeightsJob], None]
    ) -> None:
        self.device, self.models, self.cache, self.queue = device, models, cache, queue
        self._installed: dict[tuple[str, str], str] = {}  # (model, stage) -> digest materialised (worker only)
        self._lock = threading.Lock()

    def listing(self) -> dict[str, tuple[str, ...]]:
        """Stages on disk by digest, for the device's announcement."""
        return {d: tuple(stages) for d, stages in self.cache.listing().items()} if self.cache else {}

    # ------------------------------------------------------------ message loop
    def accept(self, message: WeightsMessage) -> None:
        """Stage weights from an orchestrator: booked now, installed by the worker."""
        held = self.models.get(message.model)
        if held.loaded is None:
            raise WireError(f"weights for {message.model} sent to a device that holds its own")
        self._book(held, message.digest, message.stage, message)

    def has(self, held: HeldModel, digest: str, stage: str) -> bool:
        """Whether the stage's weights of ``digest`` are held, on their way, or on disk (then
        booked and queued to be loaded)."""
        assert held.loaded is not None
        with self._lock:
            if held.fetched == digest and stage in held.loaded:
                return True
        if self.cache is None or not self.cache.has(digest, stage):
            return False
        self._book(held, digest, stage, None)
        return True

    def _book(self, held: HeldModel, digest: str, stage: str, message: WeightsMessage | None) -> None:
        """Held from now on; the worker installs them from ``message`` (None: from the cache)."""
        assert held.loaded is not None
        with self._lock:
            if held.fetched != digest:
                held.loaded.clear()
                held.fetched = digest
            held.loaded.add(stage)
        self.queue(WeightsJob(held, digest, stage, message))

    # ------------------------------------------------------------ worker
    def install(self, job: WeightsJob) -> None:
        """Verify (sha256, keys, shapes), cache and materialise one stage's weights; if
        they are bad, the stage is no longer held."""
        held, cache = job.held, self.cache
        try:
            message = job.message if job.message is not None else (cache and cache.load(job.digest, job.stage))
            if not message or message.model != held.chain.model_name or message.stage != job.stage:
                raise WireError(f"no usable cached weights of stage {job.stage} ({job.digest})")
            module, local = checked_stage(held.chain.model, job.stage, verify(message))
            if job.message is not None and cache is not None:
                cache.save(message)
            materialise(module, local)
        except (EdgeCIError, OSError) as exc:
            log.warning("%s: weights of stage %s rejected: %s", self.device, job.stage, exc)
            message = None
        else:
            self._installed[(held.chain.model_name, job.stage)] = job.digest
            size = sum(a.nbytes for a in message.tensors.values())
            log.info("%s: loaded %s stage %s (%.1f MB)", self.device, message.model, job.stage, size / 1e6)
        with self._lock:  # held (again) or not, if they are still the digest in use
            if held.loaded is not None and held.fetched == job.digest:
                (held.loaded.add if message else held.loaded.discard)(job.stage)

    def check_installed(self, held: HeldModel, block: FusedBlock, digest: str) -> None:
        """For a fetching device: the weights a block needs are the ones materialised now."""
        if held.loaded is None:
            return
        stale = [s for s in held.weighted_stages(block) if self._installed.get((held.chain.model_name, s)) != digest]
        if stale:
            raise WireError(f"weights of stage {stale[0]} ({digest}) are not installed")
