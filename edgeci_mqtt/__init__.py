"""EdgeCI-MQTT: one CNN inference split across a cluster of edge devices over MQTT.

The core is pure: models cut into stage chains (:mod:`edgeci_mqtt.models`), tile
geometry and fused-block execution (:mod:`edgeci_mqtt.core`).
"""

from __future__ import annotations

from edgeci_mqtt.core.fused import FusedBlock, TileGrid, run_block_tile, run_fused, tile_input_region
from edgeci_mqtt.core.geometry import FeatureShape, Span, TileRegion, Window
from edgeci_mqtt.errors import EdgeCIError, GeometryError, InputError, ModelError, WeightsError
from edgeci_mqtt.models import MODEL_NAMES, StageChain, build_model, load_chain

__version__ = "0.1.0"

__all__ = [
    "MODEL_NAMES",
    "EdgeCIError",
    "FeatureShape",
    "FusedBlock",
    "GeometryError",
    "InputError",
    "ModelError",
    "Span",
    "StageChain",
    "TileGrid",
    "TileRegion",
    "WeightsError",
    "Window",
    "__version__",
    "build_model",
    "load_chain",
    "run_block_tile",
    "run_fused",
    "tile_input_region",
]
