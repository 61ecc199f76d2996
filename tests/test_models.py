"""Models: torchvision-compatible parameters, stage chains equal to the plain models,
weights files checked key by key."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional

from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.core.kernels import run_chain
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.core.work import LINEAR_CHUNK_ROWS
from edgeci_mqtt.errors import ModelError, WeightsError
from edgeci_mqtt.exactness import faithful
from edgeci_mqtt.models import HAND_CUT, StageChain, build_model
from edgeci_mqtt.models.held import HeldModel, ModelStore
from tests.exactness import Reference, assert_geometry_exact

pytestmark = pytest.mark.pure

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# torchvision.models.vgg16().state_dict(), written out by hand.
VGG16_KEYS: dict[str, tuple[int, ...]] = {
    "features.0.weight": (64, 3, 3, 3),
    "features.0.bias": (64,),
    "features.2.weight": (64, 64, 3, 3),
    "features.2.bias": (64,),
    "features.5.weight": (128, 64, 3, 3),
    "features.5.bias": (128,),
    "features.7.weight": (128, 128, 3, 3),
    "features.7.bias": (128,),
    "features.10.weight": (256, 128, 3, 3),
    "features.10.bias": (256,),
    "features.12.weight": (256, 256, 3, 3),
    "features.12.bias": (256,),
    "features.14.weight": (256, 256, 3, 3),
    "features.14.bias": (256,),
    "features.17.weight": (512, 256, 3, 3),
    "features.17.bias": (512,),
    "features.19.weight": (512, 512, 3, 3),
    "features.19.bias": (512,),
    "features.21.weight": (512, 512, 3, 3),
    "features.21.bias": (512,),
    "features.24.weight": (512, 512, 3, 3),
    "features.24.bias": (512,),
    "features.26.weight": (512, 512, 3, 3),
    "features.26.bias": (512,),
    "features.28.weight": (512, 512, 3, 3),
    "features.28.bias": (512,),
    "classifier.0.weight": (4096, 25088),
    "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096),
    "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}

# torchvision.models.resnet34(): (layer, block, in channels, out channels, has downsample).
RESNET34_BLOCKS = [
    (1, 0, 64, 64, False),
    (1, 1, 64, 64, False),
    (1, 2, 64, 64, False),
    (2, 0, 64, 128, True),
    (2, 1, 128, 128, False),
    (2, 2, 128, 128, False),
    (2, 3, 128, 128, False),
    (3, 0, 128, 256, True),
    (3, 1, 256, 256, False),
    (3, 2, 256, 256, False),
    (3, 3, 256, 256, False),
    (3, 4, 256, 256, False),
    (3, 5, 256, 256, False),
    (4, 0, 256, 512, True),
    (4, 1, 512, 512, False),
    (4, 2, 512, 512, False),
]


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": () if k == "num_batches_tracked" else (channels,) for k in BN}


def resnet34_keys() -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    for layer, block, cin, cout, down in RESNET34_BLOCKS:
        p = f"layer{layer}.{block}"
        keys[f"{p}.conv1.weight"] = (cout, cin, 3, 3)
        keys.update(_bn(f"{p}.bn1", cout))
        keys[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
        keys.update(_bn(f"{p}.bn2", cout))
        if down:
            keys[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
            keys.update(_bn(f"{p}.downsample.1", cout))
    keys["fc.weight"] = (1000, 512)
    keys["fc.bias"] = (1000,)
    return keys


@pytest.mark.parametrize(("name", "expected"), [("vgg16", VGG16_KEYS), ("resnet34", resnet34_keys())])
def test_state_dict_matches_torchvision(chains: dict[str, StageChain], name: str, expected: dict) -> None:
    state = chains[name].model.state_dict()
    assert list(state) == list(expected)  # same names in the same order
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert len(expected) == {"vgg16": 32, "resnet34": 218}[name]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n != "smallcnn" else n for n in HAND_CUT])
def test_stage_chain_and_tail_equal_the_plain_model(
    chains: dict[str, StageChain],
    chains64: dict[str, StageChain],
    references: dict[tuple[str, int, int], Reference],
    name: str,
) -> None:
    """In float64, where only rounding is left (tests/exactness.py)."""
    chain = chains64[name]
    size = (224, 224) if name != "smallcnn" else (57, 41)
    ref = references[(name, *size)]
    x = ref.x.double()
    shapes = chain.check_input(x)
    last = shapes[-1]
    with torch.inference_mode():
        features = run_chain(
            chain.kernels, shapes[0], x, TileRegion.whole(*size), TileRegion.whole(last.height, last.width)
        )
        assert_geometry_exact(chain.tail(features), ref.logits64)
    assert not chains[name].model.training


def test_stage_counts_and_kinds(chains: dict[str, StageChain]) -> None:
    assert len(chains["vgg16"]) == 31 and len(chains["resnet34"]) == 20
    assert [s.kind for s in chains["resnet34"].stages[:5]] == ["conv", "bn", "relu", "maxpool", "residual"]
    assert {s.kind for s in chains["smallcnn"].stages} == {"conv", "bn", "relu", "maxpool", "avgpool", "residual"}
    assert chains["vgg16"].tail_modules() == ["avgpool", "classifier"]
    assert chains["resnet34"].tail_modules() == ["avgpool", "fc"]


@pytest.mark.parametrize("name", HAND_CUT)  # a zoo model always holds its (small) tail
def test_a_model_held_without_its_tail_makes_exactly_the_parts_it_is_given(name: str) -> None:
    """A device holds a model without its fully connected layers (VGG-16's classifier:
    470 MB); every other weight is the same, and a slice of the first layer, the layers
    after it, or the whole tail are made on demand with exactly the full model's values."""
    full = ModelStore({name: None}, seed=3).get(name)
    lean = ModelStore({name: None}, seed=3, tail=False).get(name)
    assert lean.digest == full.digest
    whole, held = full.chain.model.state_dict(), lean.chain.model.state_dict()
    left_out = {k for k, v in held.items() if v.is_meta}
    assert left_out and all(
        isinstance(lean.chain.model.get_submodule(k.rsplit(".", 1)[0]), nn.Linear) for k in left_out
    )
    assert all(torch.equal(whole[k], held[k]) for k in whole if k not in left_out)
    first = full.chain.tail_parts.first
    features = Span(first.out_features // 3, first.out_features // 3 + 300)  # across chunks of rows
    x = torch.randn(2, *_final_map(full))
    head64 = full.chain.tail_parts.head(x).double()
    ref64 = functional.linear(head64, first.weight[features.start : features.stop].double(), None)
    if first.bias is not None:
        ref64 = ref64 + first.bias[features.start : features.stop].double()
    ref32 = full.tail_part(x, features)
    assert faithful(lean.tail_part(x, features), ref32, ref64)
    version = lean.tail_version
    assert version > 0 and faithful(lean.tail_part(x, features), ref32, ref64)
    assert lean.tail_version == version  # held rows used again: nothing new to announce
    chunk = LINEAR_CHUNK_ROWS
    touched = Span(features.start // chunk * chunk, min(first.out_features, -(-features.stop // chunk) * chunk))
    no_rest = not any(isinstance(m, nn.Linear) for m in lean.chain.tail_parts.rest.modules())
    assert lean.tail_rows() == TailRows((touched,), rest=no_rest)  # what it announces it holds
    lean.make_rest()
    linear = [
        (a, b)
        for a, b in zip(lean.chain.tail_parts.rest.modules(), full.chain.tail_parts.rest.modules(), strict=True)
        if isinstance(a, nn.Linear)
    ]
    assert all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) for a, b in linear)
    made = 0
    while lean.prepare_tail(TailRows((Span(0, first.out_features),), rest=True)):  # one chunk per call
        made += 1
    assert made == -(-first.out_features // chunk) - -(-touched.size // chunk)
    assert lean.tail_rows() == TailRows((Span(0, first.out_features),), rest=True)
    assert lean.chain.tail_parts.first.weight.is_meta  # made in chunks, not as the whole layer
    chunk_bytes = chunk * first.in_features * 4
    lean.tail_bytes = 2 * chunk_bytes  # rows wanted beyond the budget are not made (they would drop each other)
    assert not lean.prepare_tail(TailRows((Span(0, min(3 * chunk, first.out_features)),)))
    logits64 = copy.deepcopy(full.chain.tail_parts.rest).double()(
        copy.deepcopy(first).double()(full.chain.tail_parts.head(x).double())
    )
    assert faithful(lean.tail_whole(x), full.chain.tail(x), logits64)
    if name == "vgg16":
        assert sum(whole[k].numel() for k in left_out) * 4 > 450e6


_MEMORY_PROBE = """
import json, torch
from edgeci_mqtt.models import build_model
from edgeci_mqtt.profiling import measure_profile
from edgeci_mqtt.device.heap import release_heap

def anon():
    status = open("/proc/self/status").read().splitlines()
    return next(int(l.split()[1]) for l in status if l.startswith("RssAnon:")) * 1024

def peak():
    status = open("/proc/self/status").read().splitlines()
    return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) * 1024

torch.set_num_threads(1)
start = peak()
measure_profile(1)
profile_peak = peak() - start
release_heap()
before = anon()
model = build_model("vgg16", tail=False)
release_heap()
weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if not t.is_meta)
print(json.dumps({"grown": anon() - before, "weights": weights, "profile_peak": profile_peak}))
"""


def test_a_device_pays_for_its_weights_and_a_bounded_profile_only() -> None:
    """Resident memory, measured in a fresh process: building VGG-16 without its tail
    grows the process by its weights (not the ~60 % more that ``Module.to_empty`` from
    the meta device left), and measuring the profile never makes the probes it skips
    (512 channels at 224 px alone is 100 MB). Both counted against a device's 450 MB."""
    run = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, timeout=120, check=True)
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["weights"] > 50e6
    assert measured["grown"] < measured["weights"] * 1.1 + 4e6, measured
    assert measured["profile_peak"] < 160e6, measured


def test_a_tail_slice_comes_from_the_weights_file_when_there_is_one(tmp_path: Path) -> None:
    path = tmp_path / "smallcnn.pth"
    model = build_model("smallcnn", seed=9)
    torch.nn.init.uniform_(model.fc.bias)  # the seeded bias is zero: make it tell
    torch.save(model.state_dict(), path)
    lean = ModelStore({"smallcnn": path}, tail=False).get("smallcnn")
    x = torch.randn(1, *_final_map(lean))
    assert torch.equal(lean.tail_part(x, Span(2, 7)), model.tail_parts().part(x, Span(2, 7)))


def _final_map(held: HeldModel) -> tuple[int, int, int]:
    """The shape (without the batch) of the model's final map at 64x64."""
    shape = held.chain.shapes(64, 64)[-1]
    return (shape.channels, shape.height, shape.width)


def test_random_weights_are_seeded() -> None:
    a, b, c = build_model("smallcnn", seed=3), build_model("smallcnn", seed=3), build_model("smallcnn", seed=4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not all(torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_weights_file_round_trip(tmp_path: Path) -> None:
    """Every parameter and buffer comes back bit for bit (so the model computes the same,
    whichever kernel runs), and the loaded model is ready for inference."""
    source = build_model("smallcnn", seed=11)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    loaded = build_model("smallcnn", weights=path)
    assert list(loaded.state_dict()) == list(source.state_dict())
    for (k, got), want in zip(loaded.state_dict().items(), source.state_dict().values(), strict=True):
        assert torch.equal(got, want), k
    assert not loaded.training


def _saved(tmp_path: Path, edit: str) -> Path:
    state = build_model("smallcnn").state_dict()
    if edit == "missing":
        del state["features.4.weight"]
    elif edit == "extra":
        state["features.99.weight"] = torch.zeros(1)
    elif edit == "shape":
        state["fc.weight"] = torch.zeros(10, 32)
    elif edit == "renamed":
        state["head.bias"] = state.pop("fc.bias")
    path = tmp_path / f"{edit}.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("missing", r"missing keys: features\.4\.weight"),
        ("extra", r"unexpected keys: features\.99\.weight"),
        ("shape", r"mis-shaped: fc\.weight \(10, 32\) \(expected \(1000, 32\)\)"),
        ("renamed", r"missing keys: fc\.bias; unexpected keys: head\.bias"),
    ],
)
def test_mismatched_weights_name_the_bad_keys(tmp_path: Path, edit: str, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        build_model("smallcnn", weights=_saved(tmp_path, edit))


def test_unreadable_weights_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("smallcnn", weights=tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="not a PyTorch weights file"):
        build_model("smallcnn", weights=garbage)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(WeightsError, match="does not hold a state_dict"):
        build_model("smallcnn", weights=listed)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'alexnet'.*vgg16"):
        build_model("alexnet")


@pytest.mark.parametrize("name", HAND_CUT)  # the zoo's: tests/test_zoo.py runs every one through its tail
def test_the_tail_knows_its_classes_without_running(name: str, chains: dict[str, StageChain]) -> None:
    """What a flow run waits for from a tail's finisher: as many logits as the model makes,
    read from the layers, also when they are on the meta device (a device's lean model)."""
    chain = chains[name]
    with torch.inference_mode():
        made = chain.model(torch.randn(1, 3, 64, 64)).shape[1]
    assert chain.tail_parts.classes == made
    assert ModelStore({name: None}, tail=False).get(name).chain.tail_parts.classes == made
