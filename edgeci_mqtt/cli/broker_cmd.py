"""``edgeci broker-config``: Mosquitto configuration, ACL and credentials for N devices."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeci_mqtt.runtime.broker_config import ROLE_USERS, write_broker_config

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "broker-config",
        help="write a Mosquitto config, ACL and credentials",
        description="Write mosquitto.conf, acl, passwd and credentials.yaml for devices dev-1..dev-N "
        f"(or --device names) and the {', '.join(ROLE_USERS)} roles.",
    )
    parser.add_argument("--out", type=Path, default=Path("broker"), help="output directory (default broker/)")
    parser.add_argument("--devices", type=int, default=4, help="number of devices dev-1..dev-N (default 4)")
    parser.add_argument("--device", action="append", help="device id (repeatable; overrides --devices)")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--config-dir", help="where the broker will see these files (e.g. /mosquitto/config)")
    parser.add_argument("--no-passwords", action="store_true", help="write only mosquitto.conf and acl")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing passwd and credentials.yaml (every password)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    devices = args.device or [f"dev-{i}" for i in range(1, args.devices + 1)]
    creds = write_broker_config(
        args.out, devices, port=args.port, config_dir=args.config_dir, passwords=not args.no_passwords, force=args.force
    )
    print(f"wrote {args.out}/mosquitto.conf and {args.out}/acl")
    if creds.passwords:
        print(
            f"wrote {args.out}/passwd and {args.out}/credentials.yaml (keep it secret) for "
            f"{len(devices)} devices and {', '.join(ROLE_USERS)}"
        )
    return 0
