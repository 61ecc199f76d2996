"""A device worker's jobs, oldest request first (no I/O).

A device runs one job at a time. In arrival order alone, a request that arrived later
could hold the worker while an earlier one's next step waited for it: whole requests of
a stream then delay every step of a split request on the same devices, and the split
request runs past its deadline on devices that are busy, not lost (docs/RUNTIME.md,
`flow`, devices). Here every job carries a ticket, the order it
came in; a ``flow`` request's jobs all carry the ticket of its program, and its worker
runs one step per job and queues the next, so a device always goes on with the oldest
request that has a step ready.

Work nobody waits for (making tail weights ahead of a placement) takes the ticket
:data:`IDLE`: it runs only when nothing else is queued, one short piece per job.
"""

from __future__ import annotations

import itertools
import queue
from typing import Generic, TypeVar

__all__ = ["IDLE", "JobQueue"]

J = TypeVar("J")

IDLE = 1 << 62
"""A ticket later than any request's: the job waits until nothing else is queued."""


class JobQueue(Generic[J]):
    """Jobs served by ticket, lowest first (thread-safe)."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, J]] = queue.PriorityQueue()
        self._count = itertools.count()

    def ticket(self) -> int:
        """The next ticket: later than every job queued so far."""
        return next(self._count)

    def put(self, job: J, ticket: int | None = None) -> None:
        """Queue ``job`` with ``ticket`` (default: a new one, i.e. after everything queued)."""
        arrival = next(self._count)
        self._queue.put((arrival if ticket is None else ticket, arrival, job))

    def __len__(self) -> int:
        """Jobs waiting (approximately, as another thread may be taking one)."""
        return self._queue.qsize()

    def get(self, timeout: float) -> J:
        """The job with the lowest ticket (ties: the earliest queued); :class:`queue.Empty`
        after ``timeout`` seconds without one."""
        return self._queue.get(timeout=timeout)[2]
