"""The models a process holds, by name, with a digest that says which weights they are.

Devices and orchestrators must agree on the weights before tiles computed on one can
be stitched on the other; the digest in a device's birth message is how the
orchestrator knows.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.chain import ChainSpec
from edgeci_mqtt.core.geometry import FeatureShape, Span
from edgeci_mqtt.core.tail_rows import TailRows
from edgeci_mqtt.core.work import LINEAR_CHUNK_ROWS, chunks_of
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.models import MODEL_NAMES, StageChain, load_chain, skeleton_chain
from edgeci_mqtt.models.imported import import_file
from edgeci_mqtt.models.weights import TailSource
from edgeci_mqtt.planner.costs import RowModel

__all__ = ["FETCH", "HeldModel", "ModelStore", "model_files", "parse_model_specs", "weights_digest"]

log = logging.getLogger("edgeci.models")


def weights_digest(name: str, weights: Path | None, seed: int) -> str:
    if weights is None:  # v2: fully connected layers drawn in seeded chunks of rows
        return hashlib.sha256(f"{name}:random-v2:{seed}".encode()).hexdigest()[:16]
    sha = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


FETCH = "fetch"
"""The digest a device announces for a model whose weights it fetches over the broker."""
T = TypeVar("T")
SHAPE_SIZES = 16
"""Input sizes whose shapes, planner view and row prices a held model remembers."""


@dataclass
class HeldModel:
    """A model held by this process. ``loaded`` is None when every weight is held;
    for a fetching device it names the stages materialised so far (of ``fetched``)."""

    chain: StageChain
    digest: str
    row_models: dict[tuple[int, int], RowModel] = field(default_factory=dict)
    specs: dict[tuple[int, int], ChainSpec] = field(default_factory=dict)
    loaded: set[str] | None = None
    fetched: str = ""
    source: TailSource | None = None
    """Where the tail's fully connected weights come from, for a model held without them."""
    _weighted: set[str] | None = field(default=None, repr=False)
    tail_bytes: int | None = None
    """The most bytes of the first tail layer's rows kept made (None: up to the whole layer)."""
    _chunks: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict, repr=False)
    tail_version: int = 0
    """Counts the changes to the tail weights made (chunks made or dropped, later layers
    made): a device announces what it holds again only when this moved, not after every job."""
    _tail_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _shapes: dict[tuple[int, int], tuple[FeatureShape, ...]] = field(default_factory=dict, repr=False)

    def weighted_stages(self, block: FusedBlock) -> list[str]:
        """Stages of ``block`` that have parameters or buffers (asked for every task)."""
        if self._weighted is None:
            keys = list(self.chain.model.state_dict())
            self._weighted = {s.name for s in self.chain.stages if any(k.startswith(s.name + ".") for k in keys)}
        return [s.name for s in block.stages(self.chain.stages) if s.name in self._weighted]

    def tail_part(self, x: Tensor, features: Span) -> Tensor:
        """The first tail layer's output ``features`` from the final map ``x``. Held without
        its tail, the layer's rows are made in chunks of :data:`LINEAR_CHUNK_ROWS` on first
        use and kept (the least recently used dropped past :attr:`tail_bytes`), so a slice
        that moves a little between requests costs only the rows it gained."""
        parts = self.chain.split_tail()
        if not parts.first.weight.is_meta:
            return parts.part(x, features)
        if not 0 <= features.start < features.stop <= parts.features:
            raise EdgeCIError(f"features {features} are not within the first layer's {parts.features}")
        head = parts.head(x)
        outputs = []
        chunks = chunks_of(features)
        for chunk, (weight, bias) in zip(chunks, self._chunks_for(chunks), strict=True):
            low = chunk * LINEAR_CHUNK_ROWS
            rows = slice(max(features.start, low) - low, min(features.stop, low + LINEAR_CHUNK_ROWS) - low)
            outputs.append(functional.linear(head, weight[rows], bias[rows] if bias is not None else None))
        return torch.cat(outputs, dim=1)

    def _chunks_for(self, needed: range, keep: frozenset[int] = frozenset()) -> list[tuple[Tensor, Tensor | None]]:
        """The chunks of rows ``needed``, made if missing; others dropped, least recently
        used first, while more than :attr:`tail_bytes` are kept (never the ones needed now,
        nor those in ``keep``)."""
        first = self.chain.split_tail().first
        with self._tail_lock:
            made_now = 0
            for chunk in needed:
                made = self._chunks.pop(chunk, None)  # re-inserted: the dict is in order of use
                if made is None:
                    name = self._name(first)  # only when rows are made: it walks every module
                    low = chunk * LINEAR_CHUNK_ROWS
                    made = self._source().rows(name, first, low, min(low + LINEAR_CHUNK_ROWS, first.out_features))
                    made_now += 1
                self._chunks[chunk] = made
            budget = self.tail_bytes if self.tail_bytes is not None else first.weight.numel() * 4
            kept = sum(w.numel() * 4 for w, _ in self._chunks.values())
            for chunk in [c for c in self._chunks if c not in needed and c not in keep]:
                if kept <= budget:
                    break
                kept -= self._chunks.pop(chunk)[0].numel() * 4
                self.tail_version += 1
            if made_now:
                self.tail_version += 1
                log.info(
                    "%s: made %d chunk(s) of %s's rows; %.0f MB of tail rows held",
                    self.chain.model_name,
                    made_now,
                    self._name(first),
                    kept / 1e6,
                )
            return [self._chunks[chunk] for chunk in needed]

    def make_rest(self) -> None:
        """Make, in place, the tail's layers after the first (to finish it or run it whole)."""
        with self._tail_lock:
            missing = [layer for layer in self._rest_layers() if layer.weight.is_meta]
            for layer in missing:
                self._source().fill(self._name(layer), layer)
            self.tail_version += bool(missing)
        if missing:
            size = sum(layer.weight.numel() * 4 for layer in missing)
            log.info("%s: made %d fully connected layer(s), %.0f MB", self.chain.model_name, len(missing), size / 1e6)

    def _rest_layers(self) -> list[nn.Linear]:
        return [m for m in self.chain.split_tail().rest.modules() if isinstance(m, nn.Linear)]

    def _rest_made(self) -> bool:
        return not any(layer.weight.is_meta for layer in self._rest_layers())

    def tail_whole(self, x: Tensor) -> Tensor:
        """The logits from the final map ``x``: the first layer in its chunks of rows (those
        made ahead of time count), then the rest."""
        self.make_rest()
        parts = self.chain.split_tail()
        return parts.finish(self.tail_part(x, Span(0, parts.features)))

    def tail_rows(self) -> TailRows:
        """What this process has made of the tail (announced, so the planner prices the rest)."""
        parts = self.chain.tail_parts
        if parts is None:  # nothing to make: the output is a map
            return TailRows()
        rest = self._rest_made()
        if not parts.first.weight.is_meta:
            return TailRows((Span(0, parts.features),), rest)
        with self._tail_lock:
            chunks = set(self._chunks)
        return TailRows.of_chunks(chunks, parts.features, rest)

    def prepare_tail(self, wanted: TailRows) -> bool:
        """Make one missing chunk of the first layer's rows ``wanted`` (or else, if wanted,
        the layers after it), so that an idle device yields to new work between chunks;
        False once nothing wanted is missing, or when the chunks wanted would not all fit
        in :attr:`tail_bytes` (making them would drop one another, round and round)."""
        parts = self.chain.split_tail()
        if parts.first.weight.is_meta:
            want = frozenset(c for run in wanted.first for c in chunks_of(run.clip(parts.features)))
            with self._tail_lock:
                missing = sorted(want - self._chunks.keys())
            chunk_bytes = LINEAR_CHUNK_ROWS * parts.first.in_features * 4
            if missing and (self.tail_bytes is None or len(want) * chunk_bytes <= self.tail_bytes):
                self._chunks_for(range(missing[0], missing[0] + 1), keep=want)
                return True
        if wanted.rest and not self._rest_made():
            self.make_rest()
            return True
        return False

    def _source(self) -> TailSource:
        if self.source is None:
            raise EdgeCIError(f"{self.chain.model_name} is held without its tail and nowhere to make it from")
        return self.source

    def _name(self, layer: nn.Module) -> str:
        return next(name for name, module in self.chain.model.named_modules() if module is layer)

    def shapes(self, height: int, width: int) -> list[FeatureShape]:
        """The chain's shapes at this input size (a device asks on every auction call, and
        working them out took most of a bid's time)."""
        shapes: tuple[FeatureShape, ...] = _remember(
            self._shapes, (height, width), lambda: tuple(self.chain.shapes(height, width))
        )
        return list(shapes)

    def spec(self, height: int, width: int) -> ChainSpec:
        """The chain as the planner sees it at this input size (every request asks)."""
        return _remember(self.specs, (height, width), lambda: self.chain.spec(height, width))

    def row_model(self, height: int, width: int) -> RowModel:
        return _remember(
            self.row_models, (height, width), lambda: RowModel(self.chain.stages, self.chain.shapes(height, width))
        )


def _remember(cache: dict[tuple[int, int], T], key: tuple[int, int], make: Callable[[], T]) -> T:
    """``cache[key]``, made on first use; input sizes come from the wire, so only the
    :data:`SHAPE_SIZES` most recent are kept."""
    if key not in cache:
        if len(cache) >= SHAPE_SIZES:
            cache.pop(next(iter(cache)))
        cache[key] = make()
    return cache[key]


def model_files(paths: list[Path] | None) -> dict[str, Path]:
    """``--model-file`` paths by the model name each serves under: the file's stem."""
    files: dict[str, Path] = {}
    for path in paths or []:
        if path.stem in files:
            raise EdgeCIError(f"two model files are named {path.stem!r}: {files[path.stem]} and {path}")
        files[path.stem] = path
    return files


def parse_model_specs(specs: list[str]) -> dict[str, Path | None]:
    """``["vgg16", "resnet34=weights.pth"]`` -> name to weights file (None: seeded random)."""
    models: dict[str, Path | None] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if name not in MODEL_NAMES:
            raise EdgeCIError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
        models[name] = Path(path) if path else None
    return models


class ModelStore:
    """Models built once at start-up (building VGG-16 takes about a second), or, with
    ``fetch``, skeletons whose stage weights arrive over the broker; without ``tail``,
    built without their fully connected layers where that changes nothing else."""

    def __init__(
        self,
        models: dict[str, Path | None],
        seed: int = 0,
        fetch: bool = False,
        tail: bool = True,
        size: int | None = None,
        files: dict[str, Path] | None = None,
    ) -> None:
        """``tail``: hold the fully connected tail; without it (a device), its layers are
        made only when a part of the tail is given to this process (VGG-16's classifier is
        470 MB; a device given a slice of its first layer makes that slice). ``size``: the
        input side zoo models are traced at (default 224; the hand-cut models take any).
        ``files``: ONNX files by model name, read here whatever ``fetch`` says (every process
        serving one has the file; its digest is the file's)."""
        self.models, self.seed, self.size, self.files = models, seed, size, dict(files or {})
        if fetch:
            self.held = {name: HeldModel(skeleton_chain(name, size), FETCH, loaded=set()) for name in models}
        else:
            self.held = {
                name: HeldModel(
                    load_chain(name, weights, seed, tail, size),
                    weights_digest(name, weights, seed),
                    source=None if tail else TailSource(seed, weights),
                )
                for name, weights in models.items()
            }
        for name, path in self.files.items():
            if name in self.held:
                raise EdgeCIError(f"model file {path} is named {name!r} like a model already held")
            self.held[name] = HeldModel(import_file(path, size), weights_digest(name, path, seed))

    @property
    def digests(self) -> dict[str, str]:
        return {name: held.digest for name, held in self.held.items()}

    def get(self, name: str) -> HeldModel:
        if name not in self.held:
            raise EdgeCIError(f"model {name!r} is not held here (held: {', '.join(self.held) or 'none'})")
        return self.held[name]
