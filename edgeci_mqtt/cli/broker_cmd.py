"""``edgeci broker-config``: Mosquitto configuration, roles and one credentials file per user."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeci_mqtt.runtime.broker_config import TlsListener, credentials_path, users_by_role, write_broker_config
from edgeci_mqtt.runtime.dynsec import ADMIN_USER

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "broker-config",
        help="write a Mosquitto config with its users and roles",
        description="Write mosquitto.conf and the Dynamic Security plugin's file (dynamic-security.json) with "
        "the device, orchestrator, client and watcher roles and a user for each device dev-1..dev-N (or --device "
        "names), orchestrator, client and watcher; each user's secret goes to credentials/<user>.yaml (0600), "
        "the admin's (for 'edgeci provision') to credentials/edgeci-admin.yaml. Needs mosquitto and mosquitto_ctrl: "
        "Mosquitto itself hashes the passwords.",
    )
    parser.add_argument("--out", type=Path, default=Path("broker"), help="output directory (default broker/)")
    parser.add_argument("--devices", type=int, default=4, help="number of devices dev-1..dev-N (default 4)")
    parser.add_argument("--device", action="append", help="device id (repeatable; overrides --devices)")
    parser.add_argument("--orchestrator", action="append", help="orchestrator user (repeatable; default orchestrator)")
    parser.add_argument("--client", action="append", help="client user (repeatable; default client)")
    parser.add_argument("--watcher", action="append", help="watcher user (repeatable; default watcher)")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--bind", default="", help="the listeners' address (default: every interface)")
    parser.add_argument(
        "--tls-port",
        type=int,
        default=0,
        help="also listen with TLS on this port, with certs/ca.crt, certs/server.crt and certs/server.key "
        "under the config dir (default: none, an example in comments)",
    )
    parser.add_argument(
        "--require-certificate", action="store_true", help="TLS clients must show a certificate signed by the CA"
    )
    parser.add_argument("--config-dir", help="where the broker will see these files (e.g. /mosquitto/config)")
    parser.add_argument("--plugin", default="", help="path of mosquitto_dynamic_security.so as the broker sees it")
    parser.add_argument("--no-passwords", action="store_true", help="write only mosquitto.conf")
    parser.add_argument("--force", action="store_true", help="replace existing users and credentials (every password)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    users = users_by_role(
        args.device or [f"dev-{i}" for i in range(1, args.devices + 1)],
        args.orchestrator or ["orchestrator"],
        args.client or ["client"],
        args.watcher or ["watcher"],
    )
    where = args.config_dir or str(args.out.resolve())
    tls = TlsListener.in_dir(args.tls_port, f"{where}/certs", args.require_certificate) if args.tls_port else None
    creds = write_broker_config(
        args.out,
        users,
        port=args.port,
        bind=args.bind,
        config_dir=args.config_dir,
        passwords=not args.no_passwords,
        force=args.force,
        plugin=args.plugin,
        tls=tls,
    )
    print(f"wrote {args.out}/mosquitto.conf")
    if creds.passwords:
        print(f"wrote {args.out}/dynamic-security.json with {len(users)} users and their roles")
        print(f"wrote one secret per user in {credentials_path(args.out, '*')} (0600): hand each process its own")
        print(f"the admin's, for 'edgeci provision', is {credentials_path(args.out, ADMIN_USER)}")
    return 0
