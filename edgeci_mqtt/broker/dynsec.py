"""Users and roles in a running broker, through Mosquitto's Dynamic Security plugin.

The plugin takes JSON commands on ``$CONTROL/dynamic-security/v1`` from its admin user
and answers on ``.../response``; it hashes every password itself and saves its file
after each change, so users can be added and removed while the broker runs (``edgeci
provision``). The command lists are built by pure functions from
:mod:`edgeci_mqtt.wire.access`; :class:`DynsecAdmin` only sends them and checks the answers.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgeci_mqtt.bus.protocol import Bus, Inbound, events_until
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.wire import DEVICE_STATE, ORCHESTRATOR_STATE, DeviceStateMessage, OrchestratorStateMessage, encode
from edgeci_mqtt.wire.access import AclRule, group_name, own_role_name, own_rules, shared_role_name, shared_rules
from edgeci_mqtt.wire.topics import ROLES, Role, check_segment

__all__ = [
    "ADMIN_ROLE",
    "ADMIN_USER",
    "CONTROL_TOPIC",
    "DynsecAdmin",
    "DynsecError",
    "administer",
    "new_password",
    "remove_user_commands",
    "revocation_rules",
    "roles_commands",
    "user_commands",
]

ADMIN_USER = "edgeci-admin"
ADMIN_ROLE = "admin"
"""The role ``mosquitto_ctrl dynsec init`` gives the admin (the plugin's commands, reading everything)."""
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
_RESPONSES = f"{CONTROL_TOPIC}/response"

Command = dict[str, Any]


class DynsecError(EdgeCIError):
    """The broker refused a Dynamic Security command (or did not answer)."""


def new_password() -> str:
    return secrets.token_urlsafe(18)


def _acl(rule: AclRule) -> Command:
    return {"acltype": rule.kind, "topic": rule.topic, "allow": rule.allow, "priority": rule.priority}


def revocation_rules() -> tuple[AclRule, ...]:
    """What the admin may write beyond the plugin's commands: the retained state of a user
    it removes. The broker does not publish a deleted user's will, so without this a
    removed device stayed "online" to every orchestrator, present and future."""
    return (
        AclRule("publishClientSend", DEVICE_STATE.filter),
        AclRule("publishClientSend", ORCHESTRATOR_STATE.filter),
    )


def roles_commands() -> list[Command]:
    """Deny by default, then each role's shared rules held by its group."""
    commands: list[Command] = [
        {
            "command": "setDefaultACLAccess",
            "acls": [
                {"acltype": "publishClientSend", "allow": False},
                {"acltype": "publishClientReceive", "allow": False},
                {"acltype": "subscribe", "allow": False},
                {"acltype": "unsubscribe", "allow": True},
            ],
        }
    ]
    for role in ROLES:
        name = shared_role_name(role)
        commands.append({"command": "createRole", "rolename": name, "acls": [_acl(r) for r in shared_rules(role)]})
        commands.append({"command": "createGroup", "groupname": group_name(role), "roles": [{"rolename": name}]})
    return commands


def user_commands(role: Role, user: str, password: str) -> list[Command]:
    """A user of ``role`` with its own role, in its role's group, its client id bound to its name."""
    check_segment(user, "user name")
    if user == ADMIN_USER or user.startswith("edgeci-"):
        raise DynsecError(f"{user!r}: names starting with 'edgeci-' are reserved")
    own = own_role_name(role, user)
    return [
        {"command": "createRole", "rolename": own, "acls": [_acl(r) for r in own_rules(role, user)]},
        {
            "command": "createClient",
            "username": user,
            "password": password,
            "clientid": user,
            "textname": f"edgeci {role}",
            "roles": [{"rolename": own}],
            "groups": [{"groupname": group_name(role)}],
        },
    ]


def remove_user_commands(user: str, role: Role) -> list[Command]:
    """Delete the user (the broker disconnects it) and its own role."""
    return [
        {"command": "deleteClient", "username": user},
        {"command": "deleteRole", "rolename": own_role_name(role, user)},
    ]


class DynsecAdmin:
    """The admin's session: sends command lists and raises on any refusal."""

    def __init__(self, bus: Bus, timeout: float = 10.0) -> None:
        self.bus, self.timeout = bus, timeout
        bus.subscribe(_RESPONSES)

    def run(self, commands: list[Command]) -> list[Command]:
        """Every command's response, in order; :class:`DynsecError` naming the first refused one."""
        tag = uuid.uuid4().hex
        tagged = [dict(c, correlationData=f"{tag}-{i}") for i, c in enumerate(commands)]
        self.bus.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}).encode(), wait=self.timeout)
        answers: dict[str, Command] = {}
        for event in events_until(self.bus, deadline=time.perf_counter() + self.timeout):
            if not isinstance(event, Inbound) or event.topic != _RESPONSES:
                continue
            try:
                responses = json.loads(event.payload)["responses"]
            except (ValueError, KeyError, TypeError):
                continue
            for response in responses if isinstance(responses, list) else ():
                if isinstance(response, dict) and str(response.get("correlationData", "")).startswith(tag):
                    answers[str(response["correlationData"])] = response
            if len(answers) == len(tagged):
                break
        else:
            raise DynsecError(f"the broker's Dynamic Security plugin did not answer within {self.timeout:.0f} s")
        ordered = [answers[c["correlationData"]] for c in tagged]
        for command, response in zip(commands, ordered, strict=True):
            if response.get("error"):
                what = command.get("username") or command.get("rolename") or command.get("groupname") or ""
                raise DynsecError(f"{command['command']} {what}: {response['error']}".strip())
        return ordered

    def add_user(self, role: Role, user: str, password: str | None = None) -> str:
        """Create ``user`` with ``role``; its password (a new random one unless given)."""
        password = password or new_password()
        self.run(user_commands(role, user, password))
        return password

    def role_of(self, user: str) -> Role:
        """The role a user holds (from its group)."""
        client = self.run([{"command": "getClient", "username": user}])[0].get("data", {}).get("client", {})
        groups = {g.get("groupname") for g in client.get("groups", [])}
        for role in ROLES:
            if group_name(role) in groups:
                return role
        raise DynsecError(f"{user!r} is not an edgeci user")

    def remove_user(self, user: str) -> Role:
        """Delete ``user`` (the broker disconnects it) and, for a device or an orchestrator,
        publish its retained state as offline: every orchestrator (or client) drops it at
        once, and those started later never see it online."""
        role = self.role_of(user)
        self.run(remove_user_commands(user, role))
        if role == "device":
            self._retain(DEVICE_STATE.build(device=user), DeviceStateMessage(user, False))
        elif role == "orchestrator":
            self._retain(ORCHESTRATOR_STATE.build(orchestrator=user), OrchestratorStateMessage(user, False))
        return role

    def _retain(self, topic: str, message: DeviceStateMessage | OrchestratorStateMessage) -> None:
        """Publish ``message`` retained on ``topic`` and read it back (the admin reads
        everything): a broker that does not let the admin write there says so here."""
        payload = encode(message)
        self.bus.subscribe(topic)
        self.bus.publish(topic, payload, retain=True, wait=self.timeout)
        for event in events_until(self.bus, deadline=time.perf_counter() + self.timeout):
            if isinstance(event, Inbound) and event.topic == topic and event.payload == payload:
                return
        raise DynsecError(
            f"removed, but {topic} still says online: this broker's admin may not write it (its role lacks "
            f"{', '.join(r.topic for r in revocation_rules())}; regenerate it with `edgeci broker-config`)"
        )

    def users(self) -> dict[str, Role]:
        """Every edgeci user and its role."""
        data = self.run([{"command": "listClients", "verbose": True}])[0].get("data", {})
        found: dict[str, Role] = {}
        for client in data.get("clients", []):
            groups = {g.get("groupname") for g in client.get("groups", [])}
            for role in ROLES:
                if group_name(role) in groups:
                    found[str(client.get("username"))] = role
        return found


@contextmanager
def administer(bus: Bus) -> Iterator[DynsecAdmin]:
    """An admin's session on ``bus`` (the admin's login) for the block: connected, then stopped."""
    admin = DynsecAdmin(bus)
    bus.start()
    try:
        yield admin
    finally:
        bus.stop()
