"""A device worker's jobs: the oldest request with a step ready goes first (pure)."""

from __future__ import annotations

import queue

import pytest

from edgeci_mqtt.runtime.jobs import JobQueue


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
