"""Stage weights: extraction, sha256, installation into a skeleton, disk cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from edgeci_mqtt.bus.memory import MemoryBroker
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.device.agent import DeviceAgent
from edgeci_mqtt.device.worker import WeightsJob
from edgeci_mqtt.errors import WireError
from edgeci_mqtt.models import StageChain, skeleton_chain
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.models.stage_weights import WeightCache, install, stage_state, verify, weights_message
from edgeci_mqtt.wire import decode, encode
from tests.planning import flat_profile

pytestmark = pytest.mark.pure


def test_a_skeleton_gets_exactly_the_stages_it_is_sent(chains: dict[str, StageChain], tmp_path: Path) -> None:
    source, skeleton = chains["smallcnn"], skeleton_chain("smallcnn")
    assert all(p.is_meta for p in skeleton.model.parameters())
    cache = WeightCache(tmp_path)
    for stage in ("features.0", "features.1", "features.6"):
        message = decode(encode(weights_message("smallcnn", "abc", stage, stage_state(source.model, stage))))
        install(skeleton.model, stage, verify(message))  # type: ignore[arg-type]
        cache.save(message)  # type: ignore[arg-type]
    assert not skeleton.model.features[0].weight.is_meta and skeleton.model.features[4].weight.is_meta
    assert skeleton.model.fc.weight.is_meta  # the tail never arrives
    x = torch.randn(1, 3, 20, 20)
    region = TileRegion.whole(20, 20)
    shape = source.shapes(20, 20)[0]
    with torch.inference_mode():
        got = skeleton.kernels[0].run(x, region, region, shape)
        assert torch.equal(got, source.kernels[0].run(x, region, region, shape))
    assert cache.listing() == {"abc": ["features.0", "features.1", "features.6"]}
    assert cache.load("abc", "features.6") is not None and cache.load("abc", "features.9") is None


def test_tampered_or_mismatched_weights_are_refused(chains: dict[str, StageChain], tmp_path: Path) -> None:
    model = chains["smallcnn"].model
    message = weights_message("smallcnn", "abc", "features.0", stage_state(model, "features.0"))
    with pytest.raises(WireError, match="sha256 mismatch"):
        verify(replace(message, sha256="0" * 64))
    skeleton = skeleton_chain("smallcnn")
    with pytest.raises(WireError, match="do not match"):
        install(skeleton.model, "features.4", verify(message))
    with pytest.raises(WireError, match="no stage"):
        install(skeleton.model, "features.99", verify(message))
    for digest, stage in (("../etc", "passwd"), ("..", "x"), (".", "x"), ("a" * 300, "x")):
        with pytest.raises(WireError, match="unsafe cache name"):
            WeightCache(tmp_path).load(digest, stage)


def test_the_device_loop_only_books_weights_its_worker_verifies_caches_and_installs(
    chains: dict[str, StageChain], tmp_path: Path
) -> None:
    """Issue 10, item 9: the sha256 and the disk write happen on the worker, not on the loop
    that answers auction calls; weights that fail there are un-booked again."""
    store = ModelStore({"smallcnn": None}, fetch=True)
    cache = WeightCache(tmp_path)
    agent = DeviceAgent("dev-1", MemoryBroker().bus("edgeci-device-dev-1"), store, flat_profile(), cache=cache)
    held = store.get("smallcnn")
    state = stage_state(chains["smallcnn"].model, "features.0")
    good = weights_message("smallcnn", "abc", "features.0", state)
    for message, held_after in ((replace(good, sha256="0" * 64), set()), (good, {"features.0"})):
        agent.ledger.accept(message)  # what the message loop does with it
        assert held.loaded == {"features.0"} and cache.listing() == {}  # booked, not checked, not written
        job = agent.worker.jobs.get(timeout=1)
        assert isinstance(job, WeightsJob)
        agent.ledger.install(job)  # what the worker does between steps
        assert held.loaded == held_after
    assert cache.listing() == {"abc": ["features.0"]}
    assert not held.chain.model.features[0].weight.is_meta
