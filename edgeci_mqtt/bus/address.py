"""Where a broker is and how to reach it: its URL, login and TLS files."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from edgeci_mqtt.errors import TransportError

__all__ = ["BrokerAddress", "TlsFiles"]


@dataclass(frozen=True)
class BrokerAddress:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://`` (TLS)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise TransportError(f"broker address {url!r} is not mqtt://host[:port] or mqtts://host[:port]")
        tls = parsed.scheme == "mqtts"
        return cls(
            parsed.hostname,
            parsed.port or (8883 if tls else 1883),
            tls,
            unquote(parsed.username) if parsed.username else None,
            unquote(parsed.password) if parsed.password else None,
        )

    def with_login(self, username: str | None, password: str | None) -> BrokerAddress:
        return BrokerAddress(self.host, self.port, self.tls, username or self.username, password or self.password)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsFiles:
    """For ``mqtts://``: the CA that signed the broker's certificate (None: the system's),
    and this process's own certificate and key when the broker requires one."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
