"""EdgeCI-MQTT: one CNN inference split across a cluster of edge devices over MQTT.

The core is pure: models cut into stage chains (:mod:`edgeci_mqtt.models`), tile
geometry (:mod:`edgeci_mqtt.core.geometry`, :mod:`edgeci_mqtt.core.blocks`) and
fused-block execution (:mod:`edgeci_mqtt.core.fused`). Importing the package imports
no torch, so the planner and the simulator run without it.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
