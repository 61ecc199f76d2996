"""Broker address and credentials options shared by the runtime commands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeci_mqtt.broker.config import Credentials
from edgeci_mqtt.bus.address import BrokerAddress, TlsFiles
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.errors import EdgeCIError

__all__ = ["add_broker", "broker_address", "broker_bus"]


def add_broker(parser: argparse.ArgumentParser, required: bool = True, inherit: bool = False) -> None:
    """The broker and login options. ``inherit``: on a sub-subcommand (``provision add``),
    so they may follow it as well as precede it; when absent there they leave the parent
    command's values alone (no defaults of their own)."""
    keep: dict[str, Any] = {"default": argparse.SUPPRESS} if inherit else {}
    parser.add_argument(
        "--broker", required=required, help="mqtt://[user:password@]host[:port] or mqtts://... (TLS)", **keep
    )
    parser.add_argument(
        "--credentials",
        type=Path,
        help="this process's credentials file from 'edgeci broker-config' or 'edgeci provision add' "
        "(or set EDGECI_USERNAME/EDGECI_PASSWORD)",
        **keep,
    )
    parser.add_argument("--ca-file", help="for mqtts://: the CA that signed the broker's certificate", **keep)
    parser.add_argument(
        "--cert-file", help="for mqtts://: this process's certificate, if the broker asks for one", **keep
    )
    parser.add_argument("--key-file", help="for mqtts://: the key of --cert-file", **keep)


def broker_bus(
    args: argparse.Namespace,
    user: str | None = None,
    address: BrokerAddress | None = None,
    in_role: bool = False,
    queued_limits: Mapping[str, int] | None = None,
) -> MqttBus:
    """A session with the broker of ``args`` (its login as :func:`broker_address` finds it,
    unless ``address`` is given), with its TLS files. ``in_role``: the process acts in a
    role (device, orchestrator, client, admin), so starting fails with a clear error when
    the broker refuses a subscription it needs rather than running deaf. ``queued_limits``:
    bytes received and not yet read, at most, by topic filter."""
    tls = TlsFiles(args.ca_file, args.cert_file, args.key_file)
    return MqttBus(
        address or broker_address(args, user),
        tls=tls,
        require_subscriptions=in_role,
        queued_limits=queued_limits,
    )


def broker_address(args: argparse.Namespace, user: str | None = None) -> BrokerAddress:
    """The broker address with a login: from the URL, the credentials file (its only user,
    or ``user``), or the environment. The user name is also the session's client id."""
    address = BrokerAddress.parse(args.broker)
    if address.username and address.password:
        return address
    if args.credentials is not None:
        passwords = Credentials.load(args.credentials).passwords
        if user is None and len(passwords) == 1:
            user = next(iter(passwords))
        if user not in passwords:
            raise EdgeCIError(f"{args.credentials} holds no password for {user or 'one user'}")
        return address.with_login(user, passwords[user])
    user = os.environ.get("EDGECI_USERNAME", user or address.username or "")
    if not user:
        raise EdgeCIError("no broker user: give one in --broker, --credentials or EDGECI_USERNAME")
    return address.with_login(user, os.environ.get("EDGECI_PASSWORD"))
