"""Where the orchestrator's dispatcher drops what devices send for the requests in flight."""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Iterator
from dataclasses import dataclass, field

from edgeci_mqtt.orchestrator.auction import Silence
from edgeci_mqtt.wire import (
    BidMessage,
    DoneMessage,
    FailureMessage,
    ProgressMessage,
    ReportMessage,
    RowsMessage,
    VectorMessage,
)

__all__ = ["Arrival", "Box", "Inbox", "Mailboxes"]

log = logging.getLogger("edgeci.orchestrator")

Inbox = RowsMessage | VectorMessage | DoneMessage | ReportMessage | ProgressMessage | FailureMessage
"""What a device sends an orchestrator about a request."""
Arrival = tuple[float, Inbox]
"""A message and when it arrived (``perf_counter``), for traces."""
Box = queue.Queue[Arrival]


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
        """A box for ``program`` (and the programs :meth:`alias`\\ ed to it) while it runs."""
        box: Box = queue.Queue()
        self.results[program] = box
        try:
            yield box
        finally:
            for name in [n for n, b in self.results.items() if b is box]:
                del self.results[name]

    def alias(self, program: str, box: Box) -> None:
        """Messages for ``program`` go to ``box`` as well (a pulled tile's own program)."""
        self.results[program] = box

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
