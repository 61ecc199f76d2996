"""One exception tree for the whole package.

Callers catch :class:`EdgeCIError` to handle anything this package rejects; the
subclasses say which kind of input or failure it was, so a CLI or an agent can log one
clear line and carry on. Every exception class the package raises on purpose is here.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "EdgeCIError",
    "EmulationError",
    "GeometryError",
    "InferenceError",
    "InputError",
    "ModelError",
    "PlanningError",
    "TransportError",
    "WeightsError",
    "WireError",
]


class EdgeCIError(Exception):
    """Base of every error this package raises on purpose."""


class ModelError(EdgeCIError):
    """Unknown model name, or a layer the stage chain cannot represent."""


class WeightsError(EdgeCIError):
    """A weights file that cannot be read or does not match the model."""


class InputError(EdgeCIError):
    """An input (image, array, tensor) of the wrong kind, shape or size."""


class GeometryError(EdgeCIError):
    """A block, region or tile grid that does not fit the feature maps."""


class ClusterError(EdgeCIError):
    """A cluster description that cannot be read or is invalid."""


class PlanningError(EdgeCIError):
    """No plan is possible (no capable device bid, an empty cluster, ...), or a plan is inconsistent."""


class WireError(EdgeCIError):
    """A payload or topic that is not valid in this schema."""


class TransportError(EdgeCIError):
    """The broker cannot be reached, refused us, or a publish cannot be sent."""


class InferenceError(EdgeCIError):
    """The cluster could not answer (no orchestrator, no device, a timeout, an error)."""


class EmulationError(EdgeCIError):
    """The emulated cluster cannot be built or torn down (not root, a tool missing, ...)."""
