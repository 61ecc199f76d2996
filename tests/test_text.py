"""Text from the wire in logs: escaped to one line and cut, so it can neither forge a line
nor flood one."""

from __future__ import annotations

import logging
import sys

import pytest

from edgeci_mqtt.text import MAX_LOG_LINE, SafeFormatter, brief, one_line

pytestmark = pytest.mark.pure

FORGERY = "dev-1\n2026-11-30 12:00:00 INFO edgeci.orchestrator: device dev-9 is online"


def test_one_line_escapes_control_characters_and_cuts() -> None:
    assert one_line("plain text") == "plain text"
    assert one_line(FORGERY) == FORGERY.replace("\n", "\\n")
    assert one_line("a\rb\x1b[31mc\x00") == "a\\rb\\x1b[31mc\\x00"
    long = one_line("x" * 100_000)
    assert len(long) == MAX_LOG_LINE and long.endswith("...")
    assert len(one_line("\n" * 100_000)) == MAX_LOG_LINE  # escapes count towards the limit


def _formatted(message: str, *args: object, exc: bool = False) -> str:
    formatter = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    record = logging.LogRecord("edgeci.test", logging.WARNING, __file__, 1, message, args, info)
    return formatter.format(record)


def test_a_wire_value_cannot_forge_or_flood_a_log_line() -> None:
    line = _formatted("rejected message on %s: %s", FORGERY, "y" * 50_000)
    assert "\n" not in line and "dev-9 is online" in line  # kept, but on the same line
    assert len(line) <= MAX_LOG_LINE + len("WARNING edgeci.test: ")


def test_a_traceback_keeps_its_own_lines() -> None:
    text = _formatted("step failed for %s", "a\nb", exc=True)
    first, *rest = text.splitlines()
    assert first == "WARNING edgeci.test: step failed for a\\nb"
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: boom"


def test_brief_bounds_hostile_values() -> None:
    nested: list[object] = []
    for _ in range(1000):
        nested = [nested]
    assert len(brief(nested)) <= 80 and len(brief("z" * 10**6)) <= 80
    assert "\n" not in brief(FORGERY)
