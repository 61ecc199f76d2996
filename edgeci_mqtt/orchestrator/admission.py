"""Which request an orchestrator serves next: one bounded queue per client, served in turn.

One client queueing 120 requests must not make another client's single request wait
behind all of them, and must not make the orchestrator hold unbounded work: each client
may have ``per_client`` requests waiting (the next one is refused at once, "busy"), and
the workers take the clients' queues round-robin. A request whose client stopped waiting
(:attr:`Admitted.deadline`) is not started.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from edgeci_mqtt.core.deadline import Deadline
from edgeci_mqtt.wire import RequestMessage

__all__ = ["Admitted", "FairQueue"]

T = TypeVar("T")


@dataclass
class Admitted:
    """A request admitted to the queue: where to answer it, and when it reached us."""

    message: RequestMessage
    response_topic: str
    correlation: bytes | None
    received: float

    @property
    def deadline(self) -> Deadline:
        """When the client stops waiting: the seconds it said, from when the request reached us."""
        return Deadline.within(self.message.deadline_s, self.received)


class FairQueue(Generic[T]):
    """Per-client FIFO queues, taken from in turn; thread-safe."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()  # clients with work waiting, in serving order
        self._ready = threading.Condition()
        self._closed = False

    def put(self, client: str, item: T) -> int | None:
        """Queue ``item``; how many of this client's requests are ahead of it, or None
        (refused) when the client already has ``per_client`` waiting."""
        with self._ready:
            waiting = self._queues.get(client, deque())
            if len(waiting) >= self.per_client:
                return None
            waiting.append(item)
            self._queues[client] = waiting  # a client new here is served after every other
            self._ready.notify()
            return len(waiting) - 1

    def get(self) -> T | None:
        """The next client's oldest request (blocks); None once closed."""
        with self._ready:
            while not self._queues and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            client, waiting = next(iter(self._queues.items()))
            item = waiting.popleft()
            if waiting:
                self._queues.move_to_end(client)  # its next one after every other client's
            else:
                del self._queues[client]
            return item

    def waiting(self) -> int:
        with self._ready:
            return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
