"""Mosquitto configuration, roles and credentials for an EdgeCI deployment.

One generator writes all of it, so the committed ``broker/`` files, the test brokers and
the demo broker cannot drift apart. Access control is Mosquitto's Dynamic Security
plugin: roles generated from the topic declarations (:mod:`edgeci_mqtt.wire.access`),
one user per device, orchestrator, client and watcher, each with its client id bound to
its name. Users are created through a short-lived private broker, so Mosquitto hashes
every password; later changes go through the running broker (``edgeci provision``).
Each user's secret goes into a file of its own (``credentials/<user>.yaml``, 0600), so
a device is handed its own secret and nothing else.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgeci_mqtt.broker.dynsec import (
    ADMIN_ROLE,
    ADMIN_USER,
    administer,
    new_password,
    revocation_rules,
    roles_commands,
    user_commands,
)
from edgeci_mqtt.broker.mosquitto import MosquittoProcess, dynsec_plugin, free_port, mosquitto_binary
from edgeci_mqtt.bus.address import BrokerAddress
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.wire import BROKER_MAX_PACKET_BYTES
from edgeci_mqtt.wire.topics import Role, check_segment

__all__ = [
    "DYNSEC_FILE",
    "EVERY_INTERFACE",
    "LOOPBACK",
    "Credentials",
    "TlsListener",
    "access_problems",
    "broker_user_problems",
    "credentials_path",
    "mosquitto_conf",
    "users_by_role",
    "write_broker_config",
    "write_secret",
]

DYNSEC_FILE = "dynamic-security.json"
_BROKER_USER = "mosquitto"
"""The user a Mosquitto started as root runs as (its default): it must own the plugin's file."""


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener; the files as the broker sees them. ``require_certificate``: clients
    must show a certificate signed by ``ca_file`` (on top of their password)."""

    port: int
    ca_file: str
    cert_file: str
    key_file: str
    require_certificate: bool = False

    @classmethod
    def in_dir(cls, port: int, certs: str, require_certificate: bool = False) -> TlsListener:
        """The files under ``certs/`` as ca.crt, server.crt and server.key."""
        return cls(port, f"{certs}/ca.crt", f"{certs}/server.crt", f"{certs}/server.key", require_certificate)


LOOPBACK = "127.0.0.1"
EVERY_INTERFACE = "0.0.0.0"
"""``--bind`` values: the default reaches no other host; devices need the broker host's own
address (or every interface, as in a container, whose interfaces are its own network)."""


def _listener(port: int, bind: str) -> str:
    return f"listener {port} {bind}".rstrip()


def _plain_block(port: int, bind: str, tls: TlsListener | None, plain_local: bool) -> str:
    """The plaintext listener: on ``bind`` without TLS; with TLS none (passwords and data
    would cross the network in clear beside the TLS listener), or with ``plain_local`` one
    on loopback only, for tools on the broker host itself."""
    if tls is None:
        return f"{_listener(port, bind)}\nprotocol mqtt\n"
    if not plain_local:
        return f"# TLS only: no plaintext listener (clients use mqtts://host:{tls.port} and the CA below).\n"
    if port == tls.port:
        raise EdgeCIError(f"the plaintext port and the TLS port are both {port}")
    return (
        "# Plaintext on loopback only, for tools on this host; every other client uses TLS.\n"
        f"{_listener(port, LOOPBACK)}\nprotocol mqtt\n"
    )


def _tls_block(tls: TlsListener | None, bind: str, config_dir: str) -> str:
    if tls is None:
        return f"""
# TLS listener (example): put the certificates next to this file and uncomment, or run
# `edgeci broker-config --tls-port 8883` (TLS only: the production setup).
#listener 8883
#protocol mqtt
#cafile {config_dir}/certs/ca.crt
#certfile {config_dir}/certs/server.crt
#keyfile {config_dir}/certs/server.key
#tls_version tlsv1.2
"""
    return f"""# TLS listener: clients connect with mqtts://host:{tls.port} and the CA below.
{_listener(tls.port, bind)}
protocol mqtt
cafile {tls.ca_file}
certfile {tls.cert_file}
keyfile {tls.key_file}
tls_version tlsv1.2
require_certificate {"true" if tls.require_certificate else "false"}
"""


def mosquitto_conf(
    config_dir: str,
    port: int = 1883,
    bind: str = LOOPBACK,
    run_as: str | None = None,
    plugin: str = "",
    tls: TlsListener | None = None,
    plain_local: bool = False,
) -> str:
    """The broker configuration. ``run_as``: the user a broker started as root keeps (the
    project's own launchers use the current user; deployments leave Mosquitto's default,
    the ``mosquitto`` user, who owns the plugin's file). ``bind``: the listeners' address
    (default loopback only; empty: every interface). With ``tls`` the broker listens with
    TLS only, unless ``plain_local`` keeps a plaintext listener on ``port`` of loopback."""
    user = f"user {run_as}\n" if run_as else ""
    return f"""# EdgeCI-MQTT broker (Mosquitto 2.x), generated by `edgeci broker-config`.
{user}per_listener_settings false
# Small messages (bids, awards, results) must not wait for Nagle and delayed ACKs (~40 ms each).
set_tcp_nodelay true
allow_anonymous false
# Users, roles and ACLs (edit with `edgeci provision` or mosquitto_ctrl, never by hand).
plugin {plugin or dynsec_plugin()}
plugin_opt_config_file {config_dir}/{DYNSEC_FILE}
# The code checks every publish against this before sending (wire.MAX_PAYLOAD_BYTES + headers).
max_packet_size {BROKER_MAX_PACKET_BYTES}
persistence true
persistence_location {config_dir}/data/
autosave_interval 60
log_type error
log_type warning
log_type notice
{_plain_block(port, bind, tls, plain_local)}{_tls_block(tls, bind, config_dir)}"""


@dataclass(frozen=True)
class Credentials:
    """User name to password (keep it secret)."""

    passwords: dict[str, str]

    def save(self, path: Path, force: bool = False) -> None:
        write_secret(path, yaml.safe_dump({"users": self.passwords}, sort_keys=True), force)

    @classmethod
    def load(cls, path: Path) -> Credentials:
        try:
            data = yaml.safe_load(path.read_text())
            return cls({str(k): str(v) for k, v in data["users"].items()})
        except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
            raise EdgeCIError(f"cannot read credentials {path}: {exc}") from exc

    def only(self, user: str) -> Credentials:
        return Credentials({user: self.passwords[user]})


def credentials_path(out: Path, user: str) -> Path:
    return out / "credentials" / f"{user}.yaml"


def write_secret(path: Path, text: str, force: bool = False) -> None:
    """Write ``text`` to a file only its owner can read, from its creation on (no moment
    at 0666 before a chmod). An existing file is an error unless ``force``: replacing a
    broker's credentials silently locks every device out."""
    if force:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError as exc:
        raise EdgeCIError(f"{path} exists; pass --force to replace it (and every password in it)") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _init_dynsec(path: Path, admin_password: str) -> None:
    """A plugin file holding only the admin user, hashed by ``mosquitto_ctrl`` (0600 from
    creation). The password goes to its prompt on stdin, never in its arguments, which any
    user of the machine can read (``ps``)."""
    command = [mosquitto_binary("mosquitto_ctrl"), "dynsec", "init", str(path), ADMIN_USER]
    done = subprocess.run(
        command,
        input=f"{admin_password}\n{admin_password}\n",  # "New password", then "Reenter password"
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0o077),
        timeout=30,
    )
    if done.returncode != 0 or not path.exists():
        raise EdgeCIError(f"mosquitto_ctrl dynsec init failed: {(done.stderr or done.stdout).strip()[:500]}")


def _bind_admin(dynsec_file: Path) -> None:
    """Bind the admin (``mosquitto_ctrl dynsec init`` sets no client id) to the client id of
    its name, as every other user is, so its credential cannot be used under another id nor
    take over another component's session; and give its role the right to mark a removed
    user offline (:func:`~edgeci_mqtt.broker.dynsec.revocation_rules`). Written into the
    plugin's file while no broker runs: through the plugin, ``setClientId`` disconnects the
    admin's own session before it answers, and changing its role kicks it too."""
    data = json.loads(dynsec_file.read_text())
    admins = [c for c in data.get("clients", []) if c.get("username") == ADMIN_USER]
    roles = [r for r in data.get("roles", []) if r.get("rolename") == ADMIN_ROLE]
    if len(admins) != 1 or len(roles) != 1:
        raise EdgeCIError(f"{dynsec_file} does not hold the admin user {ADMIN_USER!r} with its role {ADMIN_ROLE!r}")
    admins[0]["clientid"] = ADMIN_USER
    acls = roles[0].setdefault("acls", [])
    acls += [
        {"acltype": r.kind, "topic": r.topic, "allow": r.allow, "priority": r.priority} for r in revocation_rules()
    ]
    write_secret(dynsec_file, json.dumps(data, indent=1), force=True)


def _create_users(dynsec_file: Path, users: Mapping[str, Role], passwords: Mapping[str, str]) -> None:
    """Start a private broker on loopback with ``dynsec_file``, create the roles and users
    through it (the plugin saves its file after each change), stop it."""
    with tempfile.TemporaryDirectory(prefix="edgeci-broker-") as tmp:
        port = free_port()
        config = Path(tmp) / "bootstrap.conf"
        config.write_text(
            f"user {getpass.getuser()}\nper_listener_settings false\nallow_anonymous false\n"
            f"listener {port} 127.0.0.1\nplugin {dynsec_plugin()}\nplugin_opt_config_file {dynsec_file}\n"
        )
        with (Path(tmp) / "mosquitto.log").open("wb") as log:
            broker = MosquittoProcess(config, log, "127.0.0.1", port)
            try:
                address = BrokerAddress("127.0.0.1", port, username=ADMIN_USER, password=passwords[ADMIN_USER])
                with administer(MqttBus(address)) as admin:
                    commands = roles_commands()
                    for user, role in users.items():
                        commands += user_commands(role, user, passwords[user])
                    admin.run(commands)
            finally:
                broker.stop()


def users_by_role(
    devices: Sequence[str], orchestrators: Sequence[str], clients: Sequence[str], watchers: Sequence[str]
) -> dict[str, Role]:
    """Every user name with its role."""
    roles: tuple[tuple[Role, Sequence[str]], ...] = (
        ("device", devices),
        ("orchestrator", orchestrators),
        ("client", clients),
        ("watcher", watchers),
    )
    return {name: role for role, names in roles for name in names}


def _check_names(users: Mapping[str, Role]) -> None:
    for user in users:
        check_segment(user, "user name")  # it is a topic segment (devices, clients) and a client id
        if user.startswith("edgeci-"):
            raise EdgeCIError(f"{user!r}: names starting with 'edgeci-' are reserved")


def write_broker_config(
    out: Path,
    users: Mapping[str, Role],
    port: int = 1883,
    bind: str = LOOPBACK,
    config_dir: str | None = None,
    passwords: bool = True,
    run_as: str | None = None,
    force: bool = False,
    plugin: str = "",
    tls: TlsListener | None = None,
    plain_local: bool = False,
) -> Credentials:
    """Write mosquitto.conf and (with ``passwords``) the plugin's file with ``users``
    and one credentials file per user plus the admin's; existing ones only with ``force``.
    Returns every password written."""
    _check_names(users)
    dynsec_file, secrets_dir = out / DYNSEC_FILE, out / "credentials"
    there = [p for p in (dynsec_file, secrets_dir) if passwords and p.exists()]
    if there and not force:  # before writing anything: no half-replaced configuration
        raise EdgeCIError(f"{there[0]} exists; pass --force to replace every password")
    out.mkdir(parents=True, exist_ok=True)
    where = config_dir or str(out.resolve())
    (out / "mosquitto.conf").write_text(mosquitto_conf(where, port, bind, run_as, plugin, tls, plain_local))
    if not passwords:
        return Credentials({})
    if force:
        dynsec_file.unlink(missing_ok=True)
        shutil.rmtree(secrets_dir, ignore_errors=True)
    creds = Credentials({user: new_password() for user in (ADMIN_USER, *users)})
    _init_dynsec(dynsec_file, creds.passwords[ADMIN_USER])
    _create_users(dynsec_file, users, creds.passwords)
    _bind_admin(dynsec_file)
    secrets_dir.mkdir(mode=0o700)
    for user in creds.passwords:
        creds.only(user).save(credentials_path(out, user))
    (out / "data").mkdir(exist_ok=True)
    if run_as is None:
        _hand_to_broker_user(dynsec_file, out / "data")
    return creds


_BITS = {"r": 4, "w": 2, "x": 1}


def access_problems(needs: Mapping[Path, str], uid: int, gids: Collection[int]) -> list[str]:
    """What stops user ``uid`` (in groups ``gids``) from using each path as it needs
    (``"r"``, ``"rw"``, ``"rwx"``: its own mode bits) and from entering every directory above
    it: one line per obstacle, with the command that removes it. Mode bits only (no ACLs)."""
    if uid == 0:
        return []
    problems: dict[Path, str] = {}

    def lacks(path: Path, want: str) -> str:
        st = path.stat()
        shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
        granted = (stat.S_IMODE(st.st_mode) >> shift) & 7
        return "".join(c for c in want if not granted & _BITS[c])

    def enter(directory: Path) -> None:
        if directory not in problems and lacks(directory, "x"):
            mode = stat.filemode(directory.stat().st_mode)
            problems[directory] = f"it cannot enter {directory} ({mode}): chmod o+x {directory}"

    for path, want in needs.items():
        path = Path(os.path.abspath(path))
        for parent in reversed(path.parents):
            enter(parent)
        if not path.exists():
            problems[path] = f"{path} does not exist"
        elif want == "x":
            enter(path)
        elif missing := lacks(path, want):
            problems[path] = f"it cannot {'/'.join(_VERBS[c] for c in missing)} {path}: chown it to that user"
    return list(problems.values())


_VERBS = {"r": "read", "w": "write", "x": "enter"}


def broker_user_problems(out: Path, written: bool = True) -> list[str]:
    """What would stop a Mosquitto started as root, which drops to the ``mosquitto`` user,
    from reading and saving the files ``write_broker_config`` writes under ``out`` (only
    this process's directories before they are ``written``): a directory above them it
    cannot enter (a 0700 parent, as ``mktemp -d`` makes) makes it log "File is not
    readable" for the plugin's file and refuse every login. Empty unless this process is
    root (the files are handed to that user only then) and that user exists."""
    if os.geteuid() != 0:
        return []
    try:
        broker = pwd.getpwnam(_BROKER_USER)
    except KeyError:
        return []
    out = Path(os.path.abspath(out))
    if written:
        needs = {out / DYNSEC_FILE: "rw", out / "data": "rwx"}
    else:
        existing = next(p for p in (out, *out.parents) if p.exists())
        needs = {existing: "x"}
    gids = os.getgrouplist(broker.pw_name, broker.pw_gid)
    return [f"Mosquitto's user {_BROKER_USER!r}: {p}" for p in access_problems(needs, broker.pw_uid, gids)]


def _hand_to_broker_user(*paths: Path) -> None:
    """When root writes a deployment's files, the broker (which drops to ``mosquitto``)
    must own the plugin's 0600 file and its data directory to read and save them."""
    if os.geteuid() != 0:
        return
    try:
        broker = pwd.getpwnam(_BROKER_USER)
    except KeyError:
        return
    for path in paths:
        os.chown(path, broker.pw_uid, broker.pw_gid)
