"""The orchestrator's per-block decisions, event by event (pure: no clock, no I/O)."""

from __future__ import annotations

import pytest

from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.planner.plan import Task, TaskInput
from edgeci_mqtt.runtime.progress import (
    Awarded,
    BlockProgress,
    Fail,
    Ignore,
    Lost,
    Reauction,
    ResultArrived,
    Send,
    Start,
    Stitch,
    Tick,
)
from edgeci_mqtt.timeline import ORCHESTRATOR

pytestmark = pytest.mark.pure


def task(device: str, rows: tuple[int, int]) -> Task:
    region = TileRegion.of(rows[0], rows[1], 0, 8)
    return Task(device, region, 0, 0, (TaskInput(0, region, ORCHESTRATOR),))


def progress(*tasks: Task, pull: bool = False) -> BlockProgress:
    return BlockProgress(tuple(tasks), pull=pull, allowance=lambda t, d: 2.0, prefix="r-")


def sends(actions: list[object]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def test_static_tasks_go_out_at_once_and_stitch_once() -> None:
    p = progress(task("a", (0, 4)), task("b", (4, 8)))
    out = sends(p.handle(Start(0.0, ("a", "b"))))
    assert [(s.task_id, s.device) for s in out] == [("r-1", "a"), ("r-2", "b")]
    assert p.expected("r-1") == (out[0].task, "a") and not p.done
    assert p.handle(ResultArrived("r-1", "a", "", 0.5)) == [Stitch("r-1", out[0].task, "a")]
    assert p.handle(ResultArrived("r-1", "a", "", 0.6)) == [Ignore("r-1", "a", "late or unknown")]  # duplicate
    assert p.handle(ResultArrived("r-2", "a", "", 0.7)) == [Ignore("r-2", "a", "sent to b")]  # wrong sender
    assert p.handle(ResultArrived("zz", "b", "", 0.7)) == [Ignore("zz", "b", "late or unknown")]
    assert p.handle(ResultArrived("r-2", "b", "", 0.8)) == [Stitch("r-2", out[1].task, "b")]
    assert p.done and p.recovered == 0 and p.handle(Tick(100.0, ())) == []


def test_a_static_task_lost_offline_silent_or_failed_is_reauctioned() -> None:
    p = progress(task("a", (0, 2)), task("b", (2, 5)), task("c", (5, 8)))
    p.handle(Start(0.0, ("a", "b", "c")))
    assert p.handle(Tick(1.0, ("a", "b", "c"))) == []  # all within their allowance
    actions = p.handle(Tick(1.5, ("a", "c")))  # b's will fired
    assert actions == [Lost("r-2", "b", "offline"), Reauction(Span(2, 5), Span(0, 8))]
    actions = p.handle(ResultArrived("r-1", "a", "tile is nothing", 1.6))  # a bad tile
    assert actions == [Lost("r-1", "a", "tile is nothing"), Reauction(Span(0, 2), Span(0, 8))]
    actions = p.handle(Tick(2.5, ("a", "c")))  # c silent past its deadline (0 + 2 s)
    assert actions == [Lost("r-3", "c", "silent past its deadline"), Reauction(Span(5, 8), Span(0, 8))]
    assert p.failed == {"a", "b", "c"} and p.recovered == 3 and not p.pending
    new = task("d", (0, 8))
    (send,) = p.handle(Awarded((new,), 3.0))
    assert send == Send("r-4", new, "d") and p.expected("r-4") == (new, "d")
    assert p.handle(ResultArrived("r-3", "c", "", 3.1)) == [Ignore("r-3", "c", "late or unknown")]  # late
    assert p.handle(Tick(4.9, ("d",))) == []  # within its own allowance (3 + 2 s)
    p.handle(ResultArrived("r-4", "d", "", 5.0))
    assert p.done


def test_pulled_tiles_go_to_whoever_is_idle_and_come_back_when_lost() -> None:
    tiles = [task("", (i, i + 1)) for i in range(5)]
    p = progress(*tiles, pull=True)
    first = sends(p.handle(Start(0.0, ("a", "b"))))
    assert [(s.device, s.task) for s in first] == [("a", tiles[0]), ("b", tiles[1])]
    actions = p.handle(ResultArrived("r-1", "a", "", 0.1))
    assert actions[0] == Stitch("r-1", tiles[0], "a") and sends(actions) == [Send("r-3", tiles[2], "a")]
    # b fails: its tile goes back to the front of the queue; the next tick gives it to the idle device
    assert p.handle(ResultArrived("r-2", "b", "device error: boom", 0.2)) == [Lost("r-2", "b", "device error: boom")]
    assert list(p.waiting)[:1] == [tiles[1]]
    assert sends(p.handle(Tick(0.3, ("a", "b", "c")))) == [Send("r-4", tiles[1], "c")]
    assert sends(p.handle(ResultArrived("r-3", "a", "", 0.4))) == [Send("r-5", tiles[3], "a")]
    assert sends(p.handle(ResultArrived("r-4", "c", "", 0.4))) == [Send("r-6", tiles[4], "c")]
    assert not p.waiting and sends(p.handle(Tick(0.5, ("a", "b", "c")))) == []  # b is never used again
    for task_id, device in (("r-5", "a"), ("r-6", "c")):
        p.handle(ResultArrived(task_id, device, "", 0.6))
    assert p.done and p.recovered == 1


def test_a_static_task_whose_device_is_gone_is_reauctioned_not_sent() -> None:
    failed = {"b"}
    p = BlockProgress(
        (task("a", (0, 2)), task("b", (2, 5)), task("c", (5, 8))),
        pull=False,
        allowance=lambda t, d: 2.0,
        prefix="r-",
        failed=failed,
    )
    actions = p.handle(Start(0.0, ("a", "b")))  # b failed an earlier block, c has left
    assert [a for a in actions if isinstance(a, Send)] == [Send("r-1", task("a", (0, 2)), "a")]
    assert [a for a in actions if isinstance(a, Reauction)] == [
        Reauction(Span(2, 5), Span(0, 8)),
        Reauction(Span(5, 8), Span(0, 8)),
    ]
    assert p.recovered == 2 and set(p.pending) == {"r-1"}


def test_pulled_tiles_with_no_device_left_fail_clearly() -> None:
    p = progress(task("", (0, 1)), task("", (1, 2)), pull=True)
    p.handle(Start(0.0, ("a",)))
    actions = p.handle(Tick(0.1, ()))  # a is gone: its tile is back, nobody can take it
    assert actions == [Lost("r-1", "a", "offline"), Fail("no capable device remains for this inference")]


def test_a_device_that_failed_is_not_used_again_in_the_same_inference() -> None:
    failed: set[str] = set()
    first = BlockProgress((task("a", (0, 8)),), pull=False, allowance=lambda t, d: 2.0, prefix="x-", failed=failed)
    first.handle(Start(0.0, ("a", "b")))
    first.handle(ResultArrived("x-1", "a", "device error: boom", 0.1))
    second = BlockProgress(
        tuple(task("", (i, i + 1)) for i in range(2)), pull=True, allowance=lambda t, d: 2.0, prefix="y-", failed=failed
    )
    assert {s.device for s in sends(second.handle(Start(1.0, ("a", "b"))))} == {"b"}
