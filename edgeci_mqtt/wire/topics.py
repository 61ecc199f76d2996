"""The topic tree, declared once: built, matched and parsed from the same declarations.

Each :class:`TopicPattern` names its id segments (``{device}``, ``{round}``, ...) and who
may read or write it (:class:`Grant`). The builders refuse ids that cannot be a topic
segment, :meth:`TopicPattern.parse` gives a received topic's ids back (so a receiver
checks that a message's sender field agrees with the topic it came on), and the broker's
roles are generated from the grants (:mod:`edgeci_mqtt.wire.access`), so the
tree and its access rules cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from edgeci_mqtt.errors import WireError

__all__ = [
    "AUCTION_AWARD",
    "AUCTION_BIDS",
    "AUCTION_CALL",
    "CLIENT_RESPONSES",
    "DEVICE_PROBE",
    "DEVICE_ROWS",
    "DEVICE_STATE",
    "DEVICE_TASKS",
    "DEVICE_TRAFFIC",
    "EVERYTHING",
    "INFER_REQUESTS",
    "ORCHESTRATORS_SHARE",
    "ORCHESTRATOR_PENALTIES",
    "ORCHESTRATOR_STATE",
    "ORCHESTRATOR_TRAFFIC",
    "RESULTS",
    "ROLES",
    "ROOT",
    "SCHEMA_VERSION",
    "SHARED_REQUESTS",
    "TOPICS",
    "WATCHER_STATE",
    "Grant",
    "Role",
    "TopicPattern",
    "check_segment",
]

SCHEMA_VERSION = 1
ROOT = f"edgeci/v{SCHEMA_VERSION}"
EVERYTHING = f"{ROOT}/#"
ORCHESTRATORS_SHARE = "edgeci-orchestrators"

Role = Literal["device", "orchestrator", "client", "watcher"]
ROLES: tuple[Role, ...] = ("device", "orchestrator", "client", "watcher")
Access = Literal["read", "write", "readwrite"]

_MAX_SEGMENT = 128
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def check_segment(value: str, what: str = "id") -> str:
    """``value`` if it can be one topic segment (and be logged safely), else :class:`WireError`."""
    if (
        not value
        or len(value) > _MAX_SEGMENT
        or value.startswith("$")
        or not value.isprintable()  # in C: this runs for every segment of every message
        or any(c in value for c in "+#/ ")  # (the only printable space is " ")
    ):
        raise WireError(
            f"{value[:_MAX_SEGMENT]!r} cannot be a {what} (1-{_MAX_SEGMENT} printable characters, no + # / or space)"
        )
    return value


@dataclass(frozen=True)
class Grant:
    """``role`` may ``access`` the topic; ``own`` names the id segment that must be the
    user's own name (every user's client id is bound to its name, so this is also the
    client id). ``shared``: read only through the orchestrators' shared subscription."""

    role: Role
    access: Access
    own: str = ""
    shared: bool = False


@dataclass(frozen=True)
class TopicPattern:
    """One kind of topic, e.g. ``devices/{device}/state`` under :data:`ROOT`.

    ``data``: its messages carry client data (images, feature maps, logits) or anything
    else only the parties to a request need (stage weights). The watcher is denied every
    such topic (:func:`edgeci_mqtt.wire.access.shared_rules`); what it sees of them is the
    metadata the senders report on their ``traffic`` topics while a watcher is online."""

    template: str
    grants: tuple[Grant, ...] = ()
    data: bool = False

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(_PLACEHOLDER.findall(self.template))

    @property
    def filter(self) -> str:
        """The subscription filter for every topic of this kind (``+`` for each id)."""
        return f"{ROOT}/{_PLACEHOLDER.sub('+', self.template)}"

    def filter_with(self, **ids: str) -> str:
        """The subscription filter for these ids, ``+`` for the others (e.g. one device's rows from anyone)."""
        unknown = set(ids) - set(self.ids)
        if unknown:
            raise WireError(f"topic {self.template} has no id {', '.join(sorted(unknown))}")
        return f"{ROOT}/" + _PLACEHOLDER.sub(
            lambda m: check_segment(ids[m.group(1)], m.group(1)) if m.group(1) in ids else "+", self.template
        )

    def build(self, **ids: str) -> str:
        if set(ids) != set(self.ids):
            raise WireError(f"topic {self.template} needs ids {', '.join(self.ids)}, got {', '.join(ids)}")
        return f"{ROOT}/" + _PLACEHOLDER.sub(lambda m: check_segment(ids[m.group(1)], m.group(1)), self.template)

    def parse(self, topic: str) -> dict[str, str] | None:
        """The ids of ``topic`` if it is of this kind, else None."""
        parts, want = topic.split("/"), f"{ROOT}/{self.template}".split("/")
        if len(parts) != len(want):
            return None
        ids: dict[str, str] = {}
        for part, pattern in zip(parts, want, strict=True):
            name = _PLACEHOLDER.fullmatch(pattern)
            if name is None:
                if part != pattern:
                    return None
            else:
                try:
                    ids[name.group(1)] = check_segment(part, name.group(1))
                except WireError:
                    return None
        return ids

    def granted_filter(self, grant: Grant, user: str) -> str:
        """The topic filter ``grant`` opens to ``user``: its own id segment as ``user``, the others ``+``."""
        return f"{ROOT}/" + _PLACEHOLDER.sub(
            lambda m: check_segment(user, m.group(1)) if m.group(1) == grant.own else "+", self.template
        )


DEVICE_STATE = TopicPattern(
    "devices/{device}/state",
    (Grant("device", "write", own="device"), Grant("orchestrator", "read")),
)
"""Retained birth (profile, link, models) or the will: the device is offline."""
DEVICE_PROBE = TopicPattern("devices/{device}/probe", (Grant("device", "readwrite", own="device"),))
"""A device's own link probe: it publishes and reads back its own payloads."""
DEVICE_TASKS = TopicPattern(
    "devices/{device}/tasks",
    (Grant("device", "read", own="device"), Grant("orchestrator", "write")),
    data=True,
)
"""Programs, go-aheads and releases, and stage weights for one device."""
DEVICE_ROWS = TopicPattern(
    "devices/{device}/rows/{sender}/{request}",
    (
        Grant("device", "read", own="device"),
        Grant("device", "write", own="sender"),
        Grant("orchestrator", "write", own="sender"),
    ),
    data=True,
)
"""Feature-map rows for one request, to one device from another or from the orchestrator
(which forwards the maps it holds whole to the steps that read them). The topic names the
sender and the ACL lets each write only its own ``rows/<id>``, so the broker proves who
sent them; it names the request, so that a receiver knows from the topic alone (before
it buffers a frame) whether a program of its own reads rows from that sender, and how many."""
AUCTION_CALL = TopicPattern("auctions/{round}/call", (Grant("device", "read"), Grant("orchestrator", "write")))
AUCTION_BIDS = TopicPattern(
    "auctions/{round}/bids/{device}",
    (Grant("device", "write", own="device"), Grant("orchestrator", "read")),
)
AUCTION_AWARD = TopicPattern("auctions/{round}/award", (Grant("device", "read"), Grant("orchestrator", "write")))
ORCHESTRATOR_STATE = TopicPattern(
    "orchestrators/{orchestrator}/state",
    (Grant("orchestrator", "write", own="orchestrator"), Grant("client", "read")),
)
"""Retained birth of an orchestrator, or its will (offline): clients know whom to ask and
whether the one serving them died."""
RESULTS = TopicPattern(
    "orchestrators/{orchestrator}/results/{device}/{request}",
    (Grant("device", "write", own="device"), Grant("orchestrator", "read", own="orchestrator")),
    data=True,
)
"""Rows, tail slices and logits, reports and failures from one device for one request of
one orchestrator. The topic names the sender (proved by the broker) and the request, so a
payload for a request not in flight is dropped before it is decoded or reassembled."""
INFER_REQUESTS = TopicPattern(
    "infer/requests/{client}",
    (Grant("client", "write", own="client"), Grant("orchestrator", "read", shared=True)),
    data=True,
)
"""A client's requests, under its own name: the broker proves who asked, so the answer
may go only to that client's :data:`CLIENT_RESPONSES`. Read by the orchestrators through
:data:`SHARED_REQUESTS` (Mosquitto checks the ``$share`` filter at subscribe and the plain
topic at delivery)."""
CLIENT_RESPONSES = TopicPattern(
    "clients/{client}/responses",
    (Grant("client", "read", own="client"), Grant("orchestrator", "write")),
    data=True,
)
WATCHER_STATE = TopicPattern(
    "watchers/{watcher}/state",
    (Grant("watcher", "write", own="watcher"), Grant("device", "read"), Grant("orchestrator", "read")),
)
"""Retained: a watcher is watching (its will: it is not). Devices and orchestrators report
their traffic only while some watcher is online, so watching costs nothing otherwise."""
DEVICE_TRAFFIC = TopicPattern(
    "devices/{device}/traffic",
    (Grant("device", "write", own="device"), Grant("watcher", "read")),
)
"""What a device sent on data topics (kinds, sizes, regions, timings; never the data), in
batches, while a watcher is online (:mod:`edgeci_mqtt.watch.traffic`)."""
ORCHESTRATOR_TRAFFIC = TopicPattern(
    "orchestrators/{orchestrator}/traffic",
    (Grant("orchestrator", "write", own="orchestrator"), Grant("watcher", "read")),
)
"""What an orchestrator sent to devices on data topics, as :data:`DEVICE_TRAFFIC`."""
ORCHESTRATOR_PENALTIES = TopicPattern(
    "orchestrators/{orchestrator}/penalties",
    (Grant("orchestrator", "write", own="orchestrator"), Grant("orchestrator", "read"), Grant("watcher", "read")),
)
"""A device failed a request of this orchestrator: the others hold it out as well, so that
each of them does not pay the same failure once (:mod:`edgeci_mqtt.orchestrator.penalties`)."""
SHARED_REQUESTS = f"$share/{ORCHESTRATORS_SHARE}/{INFER_REQUESTS.filter}"

TOPICS: tuple[TopicPattern, ...] = (
    DEVICE_STATE,
    DEVICE_PROBE,
    DEVICE_TASKS,
    DEVICE_ROWS,
    AUCTION_CALL,
    AUCTION_BIDS,
    AUCTION_AWARD,
    ORCHESTRATOR_STATE,
    RESULTS,
    INFER_REQUESTS,
    CLIENT_RESPONSES,
    WATCHER_STATE,
    DEVICE_TRAFFIC,
    ORCHESTRATOR_TRAFFIC,
    ORCHESTRATOR_PENALTIES,
)
