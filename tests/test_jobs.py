"""A device worker's jobs: the oldest request with a step ready goes first (pure)."""

from __future__ import annotations

import queue

import pytest

from edgeci_mqtt.device.worker import IDLE, JobQueue

pytestmark = pytest.mark.pure


def test_jobs_are_served_by_ticket_and_in_arrival_order_among_equals() -> None:
    jobs: JobQueue[str] = JobQueue()
    split = jobs.ticket()  # a split request's program arrives first
    jobs.put("weights")  # then other work, each with a later ticket
    jobs.put("whole request")
    jobs.put("split step 1", split)  # the split's step becomes ready: it goes ahead
    assert jobs.get(timeout=1) == "split step 1"
    jobs.put("split step 2", split)  # its next step, queued after running the first
    assert [jobs.get(timeout=1) for _ in range(3)] == ["split step 2", "weights", "whole request"]
    with pytest.raises(queue.Empty):
        jobs.get(timeout=0.01)


def test_idle_work_waits_until_nothing_else_is_queued() -> None:
    """Making tail weights ahead is queued before the requests that come after it, yet runs
    only when no request's job waits (one short piece per job, queued again behind them)."""
    jobs: JobQueue[str] = JobQueue()
    jobs.put("make rows", IDLE)
    jobs.put("request 1")
    later = jobs.ticket()
    jobs.put("request 2 step", later)
    assert [jobs.get(timeout=1) for _ in range(3)] == ["request 1", "request 2 step", "make rows"]
    jobs.put("make more rows", IDLE)
    jobs.put("request 3")
    assert [jobs.get(timeout=1) for _ in range(2)] == ["request 3", "make more rows"]
