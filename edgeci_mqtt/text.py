"""Text about values from the wire, safe to put in an error or a log line.

A hostile value can be a list nested a thousand deep or a megabyte string; Python's own
``repr`` would recurse through all of it (and ``f"{x!r:.80}"`` builds the whole repr
before cutting it). :func:`brief` bounds depth, items and length before it builds
anything, and ``repr`` escapes newlines and control characters, so no log line can be
forged or flooded.
"""

from __future__ import annotations

import reprlib

__all__ = ["brief"]

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def brief(value: object, limit: int = 80) -> str:
    """A short, escaped repr of ``value``: at most ``limit`` characters, three levels deep."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
