"""Text about values from the wire, safe to put in an error or a log line.

A hostile value can be a list nested a thousand deep or a megabyte string; Python's own
``repr`` would recurse through all of it (and ``f"{x!r:.80}"`` builds the whole repr
before cutting it). :func:`brief` bounds depth, items and length before it builds
anything, and ``repr`` escapes newlines and control characters, so no log line can be
forged or flooded.
"""

from __future__ import annotations

import logging
import reprlib

__all__ = ["MAX_LOG_LINE", "SafeFormatter", "brief", "one_line"]

MAX_LOG_LINE = 2000
"""Characters a log message keeps (a wire value once made single lines of 100 KB)."""

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def brief(value: object, limit: int = 80) -> str:
    """A short, escaped repr of ``value``: at most ``limit`` characters, three levels deep."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str, limit: int = MAX_LOG_LINE) -> str:
    """``text`` on one line of at most ``limit`` characters: control characters (newlines
    included) escaped, so a value from the wire can neither forge a log line nor flood one."""
    if text.isprintable() and len(text) <= limit:
        return text
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


class SafeFormatter(logging.Formatter):
    """Every log message as :func:`one_line` (a traceback below it keeps its own lines).

    The last line of defence: call sites already pass wire values through :func:`brief`,
    but a topic, an exception's text or a future call site may carry anything."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)
