"""TLS with a CA made here: every process connects over mqtts:// with the CA and a client
certificate the broker requires; without them, or trusting another CA, it is refused at once."""

from __future__ import annotations

import getpass
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeci_mqtt.broker.config import Credentials, TlsListener, credentials_path, write_broker_config
from edgeci_mqtt.broker.dynsec import ADMIN_USER
from edgeci_mqtt.broker.mosquitto import MosquittoProcess, free_port
from edgeci_mqtt.bus.address import BrokerAddress, TlsFiles
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.errors import TransportError
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models import StageChain
from tests.cluster import LocalCluster, local_cluster
from tests.exactness import assert_float32_faithful, whole_model_reference

pytestmark = pytest.mark.broker


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(where: Path, name: str) -> Path:
    """A CA, and a server (for 127.0.0.1) and a client certificate it signed."""
    where.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", f"/CN={name}", cwd=where)  # fmt: skip
    for role, san in (("server", "IP:127.0.0.1"), ("client", "DNS:client")):
        (where / f"{role}.ext").write_text(f"subjectAltName={san}\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{role}.key", "-out", f"{role}.csr",
                 "-subj", f"/CN={role}", cwd=where)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{role}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{role}.crt", "-days", "2", "-extfile", f"{role}.ext", cwd=where)  # fmt: skip
    return where


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    root = tmp_path_factory.mktemp("tls")
    certs = make_ca(root / "certs", "edgeci-test-ca")
    listener = TlsListener.in_dir(free_port(), str(certs), require_certificate=True)
    args = ("--ca-file", str(certs / "ca.crt"), "--cert-file", str(certs / "client.crt"), "--key-file",
            str(certs / "client.key"))  # fmt: skip
    with local_cluster(root / "run", devices=2, models="smallcnn", tls=listener, tls_args=args) as cluster:
        yield cluster, certs


def test_every_command_works_over_tls_with_a_client_certificate(
    secured: tuple[LocalCluster, Path], tmp_path: Path, chains: dict[str, StageChain], chains64: dict[str, StageChain]
) -> None:
    cluster, certs = secured
    assert "mqtts://" in " ".join(str(a) for a in cluster.group.processes["dev-1"].args)
    files = ("--ca-file", str(certs / "ca.crt"), "--cert-file", str(certs / "client.crt"), "--key-file",
             str(certs / "client.key"))  # fmt: skip
    out = tmp_path / "logits.npy"

    def login(user: str) -> tuple[str, ...]:  # no password in a process's arguments
        url = f"mqtts://127.0.0.1:{cluster.broker.tls.port}" if cluster.broker.tls else ""
        return ("--broker", url, "--credentials", str(credentials_path(cluster.broker.workdir, user)))

    asked = subprocess.run(
        [sys.executable, "-m", "edgeci_mqtt", "infer", *login("client"), *files, "--model", "smallcnn", "--size", "64",
         "--output", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr[-2000:]
    ref = whole_model_reference(chains["smallcnn"], chains64["smallcnn"], load_input(SAMPLE_IMAGE, 64))
    assert_float32_faithful(torch.from_numpy(np.load(out)), ref.logits32, ref.logits64)
    listed = subprocess.run(
        [sys.executable, "-m", "edgeci_mqtt", "provision", *login(ADMIN_USER), *files, "list"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0 and "dev-2" in listed.stdout, listed.stderr[-2000:]
    watched = subprocess.run(
        [sys.executable, "-m", "edgeci_mqtt", "watch", *login("watcher"), *files, "--duration", "3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr[-2000:]
    assert "dev-1" in watched.stdout and "dev-2" in watched.stdout, watched.stdout[-2000:]  # their retained births


def test_without_a_certificate_or_trusting_another_ca_a_client_is_refused_at_once(
    secured: tuple[LocalCluster, Path], tmp_path: Path
) -> None:
    cluster, certs = secured
    address = BrokerAddress.parse(cluster.broker.url("client", tls=True))
    rogue = make_ca(tmp_path / "rogue", "someone-else")
    for tls in (
        TlsFiles(str(certs / "ca.crt")),  # no client certificate: the broker requires one
        TlsFiles(str(rogue / "ca.crt"), str(certs / "client.crt"), str(certs / "client.key")),  # wrong CA
        TlsFiles(str(certs / "ca.crt"), str(rogue / "client.crt"), str(rogue / "client.key")),  # not signed by it
    ):
        started = time.perf_counter()
        with pytest.raises(TransportError, match=r"TLS with .* failed"):
            MqttBus(address, tls=tls).start(timeout=30)
        assert time.perf_counter() - started < 15, tls


def test_a_tls_only_broker_has_no_plaintext_listener(tmp_path: Path) -> None:
    """broker-config's production setup: with a TLS port, nothing listens in clear (before,
    the plaintext listener stayed open beside TLS)."""
    certs = make_ca(tmp_path / "certs", "edgeci-tls-only")
    plain, tls_port = free_port(), free_port()
    listener = TlsListener.in_dir(tls_port, str(certs))
    write_broker_config(tmp_path / "broker", {"dev-1": "device"}, port=plain, run_as=getpass.getuser(), tls=listener)
    with (tmp_path / "mosquitto.log").open("wb") as log:
        broker = MosquittoProcess(tmp_path / "broker" / "mosquitto.conf", log, "127.0.0.1", tls_port)
        try:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", plain), timeout=5).close()
            password = Credentials.load(credentials_path(tmp_path / "broker", "dev-1")).passwords["dev-1"]
            address = BrokerAddress("127.0.0.1", tls_port, tls=True, username="dev-1", password=password)
            bus = MqttBus(address, tls=TlsFiles(str(certs / "ca.crt")))
            bus.start(timeout=20)
            bus.stop()
        finally:
            broker.stop()
