"""``edgeci provision``: add, remove and list users of a running broker (Dynamic Security)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeci_mqtt.broker.config import Credentials
from edgeci_mqtt.broker.dynsec import ADMIN_USER, administer
from edgeci_mqtt.cli.runtime_args import add_broker, broker_bus
from edgeci_mqtt.cli.table import format_table
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.wire.topics import ROLES

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "provision",
        help="add, remove or list users of a running broker",
        description="Change the users of a running broker through its Dynamic Security plugin, as its admin: "
        "'add NAME' creates a user with a role of its own (its client id bound to its name) and writes its "
        "credentials file; 'remove NAME' deletes it (the broker disconnects it at once); 'list' shows them.",
    )
    add_broker(parser, required=False)
    parser.set_defaults(
        run=run, broker="mqtt://127.0.0.1:1883", credentials=Path("broker/credentials") / f"{ADMIN_USER}.yaml"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a user and write its credentials file")
    add.add_argument("name", help="user name: a device id, orchestrator, client or watcher name")
    add.add_argument("--role", choices=ROLES, default="device", help="default device")
    add.add_argument("--out", type=Path, default=Path("broker/credentials"), help="where its file goes")
    add.add_argument("--force", action="store_true", help="replace an existing credentials file")
    remove = actions.add_parser("remove", help="delete a user (and disconnect it)")
    remove.add_argument("name")
    listing = actions.add_parser("list", help="every user and its role")
    for action in (add, remove, listing):  # `provision add dev-5 --broker URL` as well as `provision --broker URL add`
        add_broker(action, required=False, inherit=True)


def run(args: argparse.Namespace) -> int:
    with administer(broker_bus(args, ADMIN_USER, in_role=True)) as admin:
        if args.action == "add":
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / f"{args.name}.yaml"
            if path.exists() and not args.force:  # checked before the user exists: no secret lost
                raise EdgeCIError(f"{path} exists; pass --force to replace it")
            Credentials({args.name: admin.add_user(args.role, args.name)}).save(path, force=args.force)
            print(f"added {args.role} {args.name}; its credentials are in {path} (0600): give it to that process only")
        elif args.action == "remove":
            print(f"removed {admin.remove_user(args.name)} {args.name}")
        else:
            users = admin.users()
            print(format_table(["user", "role"], [[name, users[name]] for name in sorted(users)]))
    return 0
