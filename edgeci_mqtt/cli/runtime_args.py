"""Broker address and credentials options shared by the runtime commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edgeci_mqtt.runtime.broker_config import Credentials
from edgeci_mqtt.runtime.transport import BrokerAddress

__all__ = ["add_broker", "broker_address"]


def add_broker(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--broker", required=required, help="mqtt://[user:password@]host[:port] or mqtts://... (TLS)")
    parser.add_argument(
        "--credentials",
        type=Path,
        help="credentials.yaml from 'edgeci broker-config' (or set EDGECI_USERNAME/EDGECI_PASSWORD)",
    )
    parser.add_argument("--ca-file", help="CA certificate for mqtts://")


def broker_address(args: argparse.Namespace, user: str) -> BrokerAddress:
    """The broker address with a login: from the URL, the credentials file, or the environment."""
    address = BrokerAddress.parse(args.broker)
    if address.username and address.password:
        return address
    if args.credentials is not None:
        password = Credentials.load(args.credentials).passwords.get(user)
        return address.with_login(user, password)
    return address.with_login(os.environ.get("EDGECI_USERNAME", user), os.environ.get("EDGECI_PASSWORD"))
