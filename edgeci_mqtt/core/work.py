"""What computing a tile costs, as data: the primitive operations it runs.

A stage describes its work for an output region as a list of :class:`OpWork`; a device
profile turns that into seconds. Keeping the two apart lets the planner price the
same tile on any device, and the simulator replay it, without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OpWork"]


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
