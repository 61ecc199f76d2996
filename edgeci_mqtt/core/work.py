"""What computing a tile costs, as data: the primitive operations it runs.

A stage describes its work for an output region as a list of :class:`OpWork`; a device
profile turns that into seconds. Keeping the two apart lets the planner price the
same tile on any device, and the simulator replay it, without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeci_mqtt.core.geometry import Span

__all__ = ["LINEAR_CHUNK_ROWS", "OpWork", "chunks_of"]

LINEAR_CHUNK_ROWS = 256
"""A fully connected weight is made in chunks of this many rows, each from a seed of its
own (or read from its file), so that any rows can be made alone: a device given a slice
of VGG-16's first classifier layer makes 26 MB per 256 rows, not the whole 411 MB layer.
The planner prices the chunks a device lacks; devices make and keep whole chunks."""


def chunks_of(rows: Span) -> range:
    """Indexes of the chunks of :data:`LINEAR_CHUNK_ROWS` rows that ``rows`` touch."""
    return range(rows.start // LINEAR_CHUNK_ROWS, (rows.stop - 1) // LINEAR_CHUNK_ROWS + 1) if rows.size else range(0)


@dataclass(frozen=True)
class OpWork:
    """One primitive op over one region.

    ``kind`` is a stage kind (``conv``, ``bn``, ``relu``, ``maxpool``, ``avgpool``) or
    ``add`` (a residual sum with its ReLU); ``bytes`` counts float32 elements read
    and written; ``depth`` is the number of input elements reduced per output element
    (``in_channels / groups * kh * kw`` for a convolution, ``kh * kw`` for a pool) and
    ``pixels`` the output pixels per channel, both of which change how efficiently a
    device runs it.
    """

    kind: str
    flops: int
    bytes: int
    depth: int = 0
    pixels: int = 0
