"""Who may do what on which topic, as the broker enforces it: Dynamic Security roles
generated from the topic declarations' grants (:mod:`edgeci_mqtt.wire.topics`).

Mosquitto 2.0's Dynamic Security plugin has no ``%u``/``%c`` substitution, so each kind
of user gets two roles: a shared one (grants on any id, ``+``), held through its group,
and one of its own for the grants pinned to its own id segment (its name, which is also
its bound client id). Everything not granted is denied: the plugin's defaults are set to
deny, including delivery, so a filter that slips past a subscribe rule still receives
nothing it was not granted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgeci_mqtt.wire.topics import ORCHESTRATORS_SHARE, ROOT, TOPICS, Grant, Role, TopicPattern

__all__ = [
    "AclKind",
    "AclRule",
    "group_name",
    "own_role_name",
    "own_rules",
    "shared_role_name",
    "shared_rules",
    "watcher_denied",
]

AclKind = Literal["publishClientSend", "publishClientReceive", "subscribePattern", "subscribeLiteral"]

_DENY_FIRST = 10
"""Priority of a watcher's denials: higher is evaluated first, so they win over its ``#``."""


@dataclass(frozen=True)
class AclRule:
    """One Dynamic Security ACL entry."""

    kind: AclKind
    topic: str
    allow: bool = True
    priority: int = 0


def group_name(role: Role) -> str:
    return f"edgeci-{role}s"


def shared_role_name(role: Role) -> str:
    return f"edgeci-{role}"


def own_role_name(role: Role, user: str) -> str:
    return f"edgeci-{role}-{user}"


def _rules(topic: TopicPattern, grant: Grant, user: str) -> list[AclRule]:
    topic_filter = topic.granted_filter(grant, user)
    rules = []
    if grant.access in ("read", "readwrite"):
        if grant.shared:
            rules.append(AclRule("subscribeLiteral", f"$share/{ORCHESTRATORS_SHARE}/{topic_filter}"))
        else:
            rules.append(AclRule("subscribePattern", topic_filter))
        rules.append(AclRule("publishClientReceive", topic_filter))
    if grant.access in ("write", "readwrite"):
        rules.append(AclRule("publishClientSend", topic_filter))
    return rules


def shared_rules(role: Role) -> tuple[AclRule, ...]:
    """The rules every user of ``role`` holds (grants not pinned to an id of its own).

    A watcher reads everything but the topics that carry client data (every topic declared
    with ``data``: tasks, rows, results, requests, answers; generated here, so a new data
    topic is denied to it from its declaration on), the clients' whole namespaces, the
    broker's control topics (they carry new passwords) and the orchestrators' shared
    subscription (joining it would swallow requests). What it sees of the data topics is
    what the senders report on their ``traffic`` topics (:mod:`edgeci_mqtt.watch.traffic`)."""
    granted = tuple(
        rule
        for topic in TOPICS
        for grant in topic.grants
        if grant.role == role and not grant.own
        for rule in _rules(topic, grant, "")
    )
    if role != "watcher":
        return granted
    private = (*watcher_denied(), "$CONTROL/#")
    return (
        AclRule("subscribePattern", "#"),
        AclRule("publishClientReceive", "#"),
        AclRule("subscribePattern", "$SYS/#"),
        AclRule("publishClientReceive", "$SYS/#"),
        *granted,
        AclRule("subscribePattern", "$share/#", allow=False, priority=_DENY_FIRST),
        *(AclRule("subscribePattern", t, allow=False, priority=_DENY_FIRST) for t in private),
        *(AclRule("publishClientReceive", t, allow=False, priority=_DENY_FIRST) for t in private),
    )


def watcher_denied() -> tuple[str, ...]:
    """The edgeci topic filters a watcher may not read: every data topic's, and the clients'
    namespaces whole (nothing but requests and answers may be there)."""
    return (*(topic.filter for topic in TOPICS if topic.data), f"{ROOT}/infer/#", f"{ROOT}/clients/#")


def own_rules(role: Role, user: str) -> tuple[AclRule, ...]:
    """The rules of ``user``'s own role: the grants on topics that carry its name."""
    return tuple(
        rule
        for topic in TOPICS
        for grant in topic.grants
        if grant.role == role and grant.own
        for rule in _rules(topic, grant, user)
    )
