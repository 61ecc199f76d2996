"""Where the orchestrator's dispatcher drops what arrives, for the threads that wait for it:
requests by client, and what devices send by program and by round.

Requests: one client queueing 120 requests must not make another client's single request
wait behind all of them, and must not make the orchestrator hold unbounded work: each
client may have ``per_client`` requests waiting (the next one is refused at once, "busy"),
and the workers take the clients' queues round-robin (:class:`FairQueue`). A request whose
client stopped waiting (:attr:`Admitted.deadline`) is not started.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from edgeci_mqtt.core.deadline import Deadline
from edgeci_mqtt.orchestrator.auction import Silence
from edgeci_mqtt.wire import (
    BidMessage,
    DoneMessage,
    FailureMessage,
    ProgressMessage,
    ReportMessage,
    RequestMessage,
    RowsMessage,
    VectorMessage,
)

__all__ = ["Admitted", "Box", "FairQueue", "Inbox", "Mailboxes"]

log = logging.getLogger("edgeci.orchestrator")

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


Inbox = RowsMessage | VectorMessage | DoneMessage | ReportMessage | ProgressMessage | FailureMessage
"""What a device sends an orchestrator about a request."""
Box = queue.Queue[tuple[float, Inbox]]
"""A program's messages, each with when it arrived (``perf_counter``), for traces."""


@dataclass
class Mailboxes:
    """Bids by round and device messages by program id, for the requests in flight;
    anything for a program not in flight is dropped (before it is decoded: the topic
    names the program)."""

    results: dict[str, Box] = field(default_factory=dict)
    bids: dict[str, queue.Queue[BidMessage]] = field(default_factory=dict)
    silence: Silence = field(default_factory=Silence)
    dropped: int = 0

    @contextlib.contextmanager
    def open(self, program: str) -> Iterator[Box]:
        """A box for ``program`` while it runs (and for each pulled tile's program put in ``results`` with it)."""
        box: Box = queue.Queue()
        self.results[program] = box
        try:
            yield box
        finally:
            for name in [n for n, b in self.results.items() if b is box]:
                del self.results[name]

    def unexpected(self, result: dict[str, str] | None, bid: dict[str, str] | None) -> bool:
        """A result for a program not in flight here, or a bid for a round not open (from a
        device that is not silent), by the ids its topic carries (``result``, ``bid``): it
        is dropped unread (a flood of them costs no memory)."""
        if result is not None:
            return result["request"] not in self.results
        # a late bid of a silent device still says it is back
        return bid is not None and bid["round"] not in self.bids and bid["device"] not in self.silence

    def deliver_bid(self, message: BidMessage) -> None:
        """A bid says its device is not silent, and goes to its round if that is open."""
        self.silence.heard(message.device)
        box = self.bids.get(message.round)
        if box is not None:
            box.put(message)

    def deliver(self, message: Inbox, arrived: float) -> None:
        box = self.results.get(message.request)
        if box is None:
            self.dropped += 1
            log.debug("dropped a %s of %s, which is not in flight", message.kind, message.request)
        else:
            box.put((arrived, message))
