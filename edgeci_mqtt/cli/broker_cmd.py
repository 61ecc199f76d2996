"""``edgeci broker-config``: Mosquitto configuration, roles and one credentials file per user."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edgeci_mqtt.broker.config import (
    LOOPBACK,
    TlsListener,
    broker_user_problems,
    credentials_path,
    users_by_role,
    write_broker_config,
)
from edgeci_mqtt.broker.dynsec import ADMIN_USER
from edgeci_mqtt.errors import EdgeCIError

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
    parser.add_argument("--port", type=int, default=1883, help="the plaintext listener's port (default 1883)")
    parser.add_argument(
        "--bind",
        default=LOOPBACK,
        help=f"the listeners' address: the broker host's address the devices reach (default {LOOPBACK}: this host "
        "only, until told; 0.0.0.0: every interface, as in a container)",
    )
    parser.add_argument(
        "--tls-port",
        type=int,
        default=0,
        help="listen with TLS only, on this port, with certs/ca.crt, certs/server.crt and certs/server.key under "
        "the config dir: the production setup (default: plaintext, a TLS example in comments)",
    )
    parser.add_argument(
        "--plain-localhost",
        action="store_true",
        help=f"with --tls-port: also keep a plaintext listener on --port of {LOOPBACK}, for tools on the broker host",
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
    if args.plain_localhost and not args.tls_port:
        raise EdgeCIError("--plain-localhost keeps a plaintext listener beside TLS: it needs --tls-port")
    checked = not args.no_passwords and args.config_dir is None  # elsewhere (a container), other users read them
    if checked:
        _check_broker_user(broker_user_problems(args.out, written=False), "nothing written")
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
        plain_local=args.plain_localhost,
    )
    print(f"wrote {args.out}/mosquitto.conf")
    if creds.passwords:
        print(f"wrote {args.out}/dynamic-security.json with {len(users)} users and their roles")
        print(f"wrote one secret per user in {credentials_path(args.out, '*')} (0600): hand each process its own")
        print(f"the admin's, for 'edgeci provision', is {credentials_path(args.out, ADMIN_USER)}")
    if checked:
        _check_broker_user(broker_user_problems(args.out), "the files are written: fix it before starting Mosquitto")
    if args.config_dir is None:
        listening = f"mqtts://{args.bind}:{args.tls_port}" if tls else f"mqtt://{args.bind}:{args.port}"
        print(f"start the broker: mosquitto -c {args.out}/mosquitto.conf   (listening on {listening})")
        if os.geteuid() != 0:
            print(
                "  as this user: it reads these files as you. Started as root, Mosquitto drops to the 'mosquitto' "
                "user, which cannot read them: then run broker-config as root, which hands them to that user."
            )
    return 0


def _check_broker_user(problems: list[str], then: str) -> None:
    """Fail with every obstacle and its fix: a broker that cannot read its plugin's file
    starts, logs "File is not readable" and refuses every login."""
    if problems:
        raise EdgeCIError(
            "Mosquitto started as root drops to the 'mosquitto' user, which could not use its files "
            f"(it would refuse every login): {'; '.join(problems)}; or choose another --out ({then})"
        )
