"""The device agent: profile, announce, bid, compute tiles, publish results.

Threads: paho's network thread only enqueues (see :mod:`transport`); the agent's main
loop decodes and validates every message, answers auction calls at once from its own
profile, link and queue, and hands tasks to one worker thread, which runs the model.
Anything malformed or hostile is logged in one line and changes nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from edgeci_mqtt import __version__
from edgeci_mqtt.core.blocks import FusedBlock, tile_input_region
from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.planner.awas import make_bid
from edgeci_mqtt.planner.cluster import Link
from edgeci_mqtt.planner.environment import DeviceView
from edgeci_mqtt.planner.profile import DeviceProfile
from edgeci_mqtt.profiling import measure_profile
from edgeci_mqtt.runtime.models_held import HeldModel, ModelStore
from edgeci_mqtt.runtime.transport import BrokerAddress, Connected, Connection, Inbound
from edgeci_mqtt.runtime.weights import WeightCache, checked_stage, materialise, verify
from edgeci_mqtt.wire import (
    AuctionCall,
    BidMessage,
    DeviceState,
    ResultMessage,
    TaskMessage,
    Topics,
    WeightsMessage,
    decode_tensor,
    encode,
    encode_tensor,
    region_list,
)
from edgeci_mqtt.wire import Reassembler as _Reassembler

__all__ = ["DeviceAgent", "ValidTask", "block_geometry", "validate_task"]

log = logging.getLogger("edgeci.device")


@dataclass(frozen=True)
class ValidTask:
    message: TaskMessage
    held: HeldModel
    block: FusedBlock
    shapes: list[FeatureShape]
    in_region: TileRegion
    out_region: TileRegion
    tile: torch.Tensor
    received: float
    predicted_s: float = 0.0  # this device's estimate, counted in the queue it bids with


def _region(value: list[int], where: str) -> TileRegion:
    if len(value) != 4 or not all(isinstance(v, int) for v in value) or value[1] <= value[0] or value[3] <= value[2]:
        raise WireError(f"{where}: bad region {value!r}")
    return TileRegion(Span(value[0], value[1]), Span(value[2], value[3]))


def _span(value: Any, where: str) -> tuple[int, int]:
    """``[start, stop)`` with ``0 <= start < stop``."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] < value[1]
    ):
        raise WireError(f"{where}: expected [start, stop) with 0 <= start < stop, got {value!r}")
    return int(value[0]), int(value[1])


MAX_INPUT_SIDE = 8192


def _pair(value: list[Any], where: str) -> tuple[int, int]:
    if len(value) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INPUT_SIDE for v in value
    ):
        raise WireError(f"{where}: expected two ints in [1, {MAX_INPUT_SIDE}], got {value!r}")
    return int(value[0]), int(value[1])


def block_geometry(held: HeldModel, input_hw: Any, block: Any, where: str) -> tuple[FusedBlock, list[FeatureShape]]:
    """The block and the chain's shapes for a message's input size, checked."""
    height, width = _pair(input_hw, "input_hw")
    fused = FusedBlock(*_span(block, "block"))
    try:
        shapes = held.shapes(height, width)
        fused.stages(held.chain.stages)
    except EdgeCIError as exc:
        raise WireError(f"{where}: {exc}") from exc
    return fused, shapes


def validate_task(
    message: TaskMessage, models: ModelStore, load_cached: Callable[[HeldModel, str, str], bool] | None = None
) -> ValidTask:
    """Check a task against the model it names; every inconsistency is a :class:`WireError`.

    A fetching device also needs the weights of every stage of the block, loaded or in
    its cache (``load_cached(held, digest, stage)`` loads one and says whether it could).
    """
    held = models.get(message.model)
    if held.loaded is None and message.digest != held.digest:
        raise WireError(f"task {message.task}: weights digest {message.digest} is not ours ({held.digest})")
    block, shapes = block_geometry(held, message.input_hw, message.block, f"task {message.task}")
    in_region = _region(message.in_region, "in_region")
    out_region = _region(message.out_region, "out_region")
    out_shape = shapes[block.stop]
    if not TileRegion.whole(out_shape.height, out_shape.width).contains(out_region):
        raise WireError(f"task {message.task}: out_region {out_region} is outside the {out_shape} output")
    tile = decode_tensor(message.input, "task.input")
    expected = (1, shapes[block.start].channels, in_region.height, in_region.width)
    if tuple(tile.shape) != expected or tile.dtype != torch.float32:
        raise WireError(f"task {message.task}: input {tuple(tile.shape)} {tile.dtype} should be {expected} float32")
    try:
        need = tile_input_region(held.chain.stages, shapes, block, out_region)
    except EdgeCIError as exc:
        raise WireError(f"task {message.task}: {exc}") from exc
    if not in_region.contains(need):
        raise WireError(f"task {message.task}: in_region {in_region} does not cover the needed {need}")
    if held.loaded is not None:
        for stage in held.weighted_stages(block):
            fresh = held.fetched == message.digest and stage in held.loaded
            if not fresh and not (load_cached and load_cached(held, message.digest, stage)):
                raise WireError(f"task {message.task}: weights of stage {stage} ({message.digest}) are not here")
    return ValidTask(message, held, block, shapes, in_region, out_region, tile, time.perf_counter())


@dataclass(frozen=True)
class _WeightsJob:
    """Verified weights of one stage, installed by the worker between tasks."""

    module: torch.nn.Module
    state: dict[str, torch.Tensor]


class DeviceAgent:
    """One device: run :meth:`run` until ``stop`` is set."""

    def __init__(
        self,
        device_id: str,
        address: BrokerAddress,
        models: ModelStore,
        threads: int = 1,
        cache: WeightCache | None = None,
    ) -> None:
        Topics.device_state(device_id)  # the id must be a valid topic segment
        self.device_id, self.models, self.threads, self.cache = device_id, models, threads, cache
        torch.set_num_threads(threads)
        log.info("%s: profiling (%d thread(s))", device_id, threads)
        self.profile: DeviceProfile = measure_profile(threads)
        offline = encode(DeviceState(device_id, False, version=__version__))
        self.connection = Connection(
            address, f"edgeci-device-{device_id}", will=(Topics.device_state(device_id), offline)
        )
        self.link = Link(100.0, 1.0)
        self.tasks: queue.Queue[ValidTask | _WeightsJob | None] = queue.Queue()
        self._backlog_s = 0.0  # predicted seconds of queued and running work
        self._lock = threading.Lock()
        self._reassembler = _Reassembler(max_bytes=512 << 20)

    # ------------------------------------------------------------ lifecycle
    def run(self, stop: threading.Event) -> None:
        conn = self.connection
        for topic in (
            Topics.device_tasks(self.device_id),
            Topics.auction_calls,
            Topics.device_probe(self.device_id),
        ):
            conn.subscribe(topic)
        conn.start()
        self.link = self._measure_link()
        self._birth()
        worker = threading.Thread(target=self._work, name=f"{self.device_id}-worker", daemon=True)
        worker.start()
        log.info("%s: online, holding %s", self.device_id, ", ".join(self.models.held))
        while not stop.is_set():
            try:
                event = conn.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(event, Connected):
                self._birth()  # a new session: the broker may have fired our will
            elif isinstance(event, Inbound):
                self._handle(event)
        self.tasks.put(None)
        conn.publish(
            Topics.device_state(self.device_id),
            encode(DeviceState(self.device_id, False, version=__version__)),
            retain=True,
            wait=2.0,
        )
        conn.stop()
        log.info("%s: offline", self.device_id)

    def _birth(self) -> None:
        state = DeviceState(
            self.device_id,
            True,
            profile=self.profile.to_dict(),
            link=self.link.to_dict(),
            models=self.models.digests,
            version=__version__,
            weights=self.cache.listing() if self.cache else {},
        )
        self.connection.publish(Topics.device_state(self.device_id), encode(state), retain=True)

    def _measure_link(self) -> Link:
        """Round trips through the broker to our own probe topic: small for latency, 256 KiB
        for bandwidth (both directions cross our link)."""
        topic, conn = Topics.device_probe(self.device_id), self.connection

        def round_trip(size: int) -> float:
            started = time.perf_counter()
            conn.publish(topic, bytes(size), qos=0)
            deadline = started + 5.0
            while time.perf_counter() < deadline:
                try:
                    event = conn.events.get(timeout=0.1)
                except queue.Empty:
                    continue
                if isinstance(event, Inbound) and event.topic == topic and len(event.payload) == size:
                    return time.perf_counter() - started
            raise EdgeCIError("no answer from the broker to the link probe")

        try:
            small = min(round_trip(16) for _ in range(3))
            big_size = 256 * 1024
            big = min(round_trip(big_size) for _ in range(2))
        except EdgeCIError as exc:
            log.warning("%s: %s; assuming 100 Mbit/s and 1 ms", self.device_id, exc)
            return Link(100.0, 1.0)
        seconds = max(big - small, 1e-6)
        link = Link(min(10_000.0, 2 * big_size * 8 / seconds / 1e6), max(small / 2 * 1e3, 0.01))
        log.info("%s: link %.0f Mbit/s, %.2f ms", self.device_id, link.bandwidth_mbit, link.latency_ms)
        return link

    # ------------------------------------------------------------ messages
    def _handle(self, event: Inbound) -> None:
        try:
            message = self._reassembler.feed(event.topic, event.payload)
        except WireError as exc:
            log.warning("%s: rejected message on %s: %s", self.device_id, event.topic, exc)
            return
        if message is None:
            return
        try:
            if isinstance(message, AuctionCall) and event.topic.endswith("/call"):
                self._bid(message)
            elif isinstance(message, WeightsMessage) and event.topic == Topics.device_tasks(self.device_id):
                self._install(message, verify(message))
                if self.cache is not None:
                    self.cache.save(message)
            elif isinstance(message, TaskMessage) and event.topic == Topics.device_tasks(self.device_id):
                try:
                    task = validate_task(message, self.models, self._load_cached)
                    task = replace(task, predicted_s=self._predict(task))
                except EdgeCIError as exc:
                    self._refuse(message, exc)
                    raise
                with self._lock:
                    self._backlog_s += task.predicted_s
                self.tasks.put(task)
            else:
                log.warning("%s: ignored a %s message on %s", self.device_id, message.kind, event.topic)
        except EdgeCIError as exc:
            log.warning("%s: rejected %s on %s: %s", self.device_id, message.kind, event.topic, exc)
        except Exception as exc:  # hostile input must never stop the agent
            log.warning(
                "%s: rejected %s on %s: %s: %s", self.device_id, message.kind, event.topic, type(exc).__name__, exc
            )

    def _refuse(self, message: TaskMessage, reason: Exception) -> None:
        """Tell the orchestrator at once, so it re-auctions instead of waiting for a deadline."""
        region = message.out_region if isinstance(message.out_region, list) else []
        refusal = ResultMessage(message.request, message.task, self.device_id, region, error=f"refused: {reason}")
        with contextlib.suppress(EdgeCIError):  # no valid orchestrator id to answer: the log says it
            self.connection.publish(Topics.results(message.orchestrator), encode(refusal))

    def _install(self, message: WeightsMessage, state: dict[str, torch.Tensor]) -> None:
        """Book the stage as loaded now (tasks are validated here, in order) and let the
        worker materialise it between tasks, so no task ever runs on half-swapped weights."""
        held = self.models.get(message.model)
        if held.loaded is None:
            raise WireError(f"weights for {message.model} sent to a device that holds its own")
        if held.fetched != message.digest:
            held.loaded.clear()
            held.fetched = message.digest
        module, local = checked_stage(held.chain.model, message.stage, state)
        self.tasks.put(_WeightsJob(module, local))
        held.loaded.add(message.stage)
        size = sum(t.numel() * t.element_size() for t in state.values())
        log.info(
            "%s: loaded %s stage %s (%.1f MB; %d stages held)",
            self.device_id,
            message.model,
            message.stage,
            size / 1e6,
            len(held.loaded),
        )

    def _load_cached(self, held: HeldModel, digest: str, stage: str) -> bool:
        cached = self.cache.load(digest, stage) if self.cache else None
        if cached is None or cached.model != held.chain.model_name:
            return False
        self._install(cached, verify(cached))
        return True

    def _view(self) -> DeviceView:
        with self._lock:
            backlog = self._backlog_s
        return DeviceView(self.device_id, self.profile, self.link, backlog)

    def _bid(self, call: AuctionCall) -> None:
        if call.model not in self.models.held:
            return  # we cannot run it: no bid
        held = self.models.get(call.model)
        block, shapes = block_geometry(held, call.input_hw, call.block, f"auction {call.round}")
        rows = held.row_model(shapes[0].height, shapes[0].width)
        out_height = shapes[block.stop].height
        items = []
        for item in call.items:
            first, last = _span(item, "item")
            if last > out_height:
                raise WireError(f"auction {call.round}: item {item} is outside the {out_height} output rows")
            items.append(Span(first, last))
        if not items or len(items) > 4096:
            raise WireError(f"auction {call.round}: {len(items)} items")
        bid = make_bid(self._view(), rows, block, items)
        message = BidMessage(call.round, self.device_id, bid.queue_s, list(bid.alone_s), list(bid.extend_s))
        self.connection.publish(Topics.auction_bids(call.round, self.device_id), encode(message))

    def _predict(self, task: ValidTask) -> float:
        rows = task.held.row_model(task.shapes[0].height, task.shapes[0].width)
        r = task.out_region.rows
        a, b = np.array([r.start]), np.array([r.stop])
        return float(rows.compute_seconds(self.profile, task.block, a, b)[0])

    # ------------------------------------------------------------ work
    def _work(self) -> None:
        torch.set_num_threads(self.threads)
        while (task := self.tasks.get()) is not None:
            if isinstance(task, _WeightsJob):
                materialise(task.module, task.state)
                continue
            started = time.perf_counter()
            message = task.message
            try:
                with torch.inference_mode():
                    out = run_block_tile(
                        task.held.chain.kernels, task.shapes, task.block, task.tile, task.in_region, task.out_region
                    )
                computed = time.perf_counter()
                payload = encode_tensor(out.contiguous())
                wall = time.time() - time.perf_counter()  # for the orchestrator's timeline
                timings = {
                    "queue_s": started - task.received,
                    "compute_s": computed - started,
                    "encode_s": time.perf_counter() - computed,
                    "received_at": wall + task.received,
                    "started_at": wall + started,
                    "computed_at": wall + computed,
                }
                result = ResultMessage(
                    message.request, message.task, self.device_id, region_list(task.out_region), payload, timings
                )
            except Exception as exc:  # a bad task must not kill the worker
                log.exception("%s: task %s failed", self.device_id, message.task)
                result = ResultMessage(
                    message.request,
                    message.task,
                    self.device_id,
                    region_list(task.out_region),
                    error=f"{type(exc).__name__}: {exc}",
                )
            try:
                self.connection.publish(Topics.results(message.orchestrator), encode(result))
            except EdgeCIError as exc:
                log.error("%s: cannot publish result of %s: %s", self.device_id, message.task, exc)
            finally:
                with self._lock:
                    self._backlog_s = max(0.0, self._backlog_s - task.predicted_s)
            log.debug(
                "%s: task %s done in %.1f ms", self.device_id, message.task, 1e3 * (time.perf_counter() - started)
            )
