"""What the orchestrator holds of one request: the image, the maps it stitches, the answers.

The orchestrator is a holder of rows like any device: it keeps the tiles sent to it in
the map of their boundary, cuts the pieces devices read from it out of the maps it holds
whole, runs the blocks a plan keeps on it and, at the end, the tail or its finish. Maps
are NumPy float32 arrays, as they travel; torch only sees them (without a copy) to compute.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import FeatureShape, TileRegion
from edgeci_mqtt.models import StageChain
from edgeci_mqtt.orchestrator.programs import Answer, Compiled, Logits, Slice

__all__ = ["Holdings"]

Map = NDArray[np.float32]


class Holdings:
    """The orchestrator's maps of one request by boundary (the image at 0), and the answers."""

    def __init__(self, shapes: Sequence[FeatureShape], image: Map) -> None:
        self.shapes = shapes
        self.maps: dict[int, Map] = {0: np.ascontiguousarray(image, dtype=np.float32)}
        self.answers: dict[Answer, Map] = {}

    def _map(self, boundary: int) -> Map:
        if boundary not in self.maps:
            shape = self.shapes[boundary]
            self.maps[boundary] = np.empty((1, shape.channels, shape.height, shape.width), dtype=np.float32)
        return self.maps[boundary]

    def _whole(self, boundary: int) -> TileRegion:
        shape = self.shapes[boundary]
        return TileRegion.whole(shape.height, shape.width)

    def keep(self, boundary: int, region: TileRegion, tile: Map) -> None:
        """Stitch a tile into its boundary's map."""
        rows, cols = region.within(self._whole(boundary))
        self._map(boundary)[:, :, rows, cols] = tile

    def keep_answer(self, answer: Answer, values: Map) -> None:
        self.answers[answer] = values

    def cut(self, boundary: int, region: TileRegion) -> Map:
        """``region`` of a map held whole, as a contiguous array to send."""
        rows, cols = region.within(self._whole(boundary))
        return np.ascontiguousarray(self.maps[boundary][:, :, rows, cols])

    def forget_after(self, boundary: int) -> None:
        """A restart from ``boundary``: what was stitched after it is redone."""
        self.maps = {b: m for b, m in self.maps.items() if b <= boundary}
        self.answers.clear()

    def compute(self, chain: StageChain, block: FusedBlock) -> None:
        """Run ``block`` here on the whole map at its start (DeepThings' gateway layers)."""
        whole_in, whole_out = self._whole(block.start), self._whole(block.stop)
        with torch.inference_mode():
            out = run_block_tile(
                chain.kernels, list(self.shapes), block, torch.from_numpy(self.maps[block.start]), whole_in, whole_out
            )
        self.maps[block.stop] = out.contiguous().numpy()

    def logits(self, chain: StageChain, work: Compiled) -> torch.Tensor:
        """The answer: the tail on the final map, the tail's finish on the first layer's
        slices (in feature order), or the logits a device sent."""
        with torch.inference_mode():
            if work.tail_here:
                return chain.tail(torch.from_numpy(self.maps[work.final]))
            if work.finish_here:
                slices = sorted((a for a in self.answers if isinstance(a, Slice)), key=lambda a: a.features.start)
                first = np.concatenate([self.answers[a] for a in slices], axis=1)
                return chain.tail_parts.finish(torch.from_numpy(first))
            logits = next(a for a in self.answers if isinstance(a, Logits))
            return torch.from_numpy(self.answers[logits])
