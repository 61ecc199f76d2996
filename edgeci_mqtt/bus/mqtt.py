"""The only module that touches paho-mqtt: the real :class:`~edgeci_mqtt.bus.protocol.Bus`.

paho's callbacks run on its network thread; here they only put small values
(:class:`Inbound`, :class:`Connected`, :class:`Disconnected`) on a queue, so model
code never runs on the network thread and the rest of the project never sees a paho
type. MQTT v5, ``CallbackAPIVersion.VERSION2``, automatic reconnection with back-off
and re-subscription, except after a refusal (bad login, id not allowed) or a takeover
(another connection used this client id): those end the session with a clear error
rather than a reconnection loop that would take the id back and forth. Every publish is
checked against the size limit first and split into chunk frames when needed.

A broker that denies a subscription says so only in its SUBACK (MQTT v5: 0x87 Not
authorized under Mosquitto's Dynamic Security); the session itself stays up and every
message is silently dropped. A process that must act in a role (a device, an
orchestrator, a client) asks for ``require_subscriptions``: :meth:`MqttBus.start` then
waits for the SUBACKs of what it subscribed to before starting and raises a
:class:`TransportError` naming the refused filters, instead of announcing itself online
to a broker that will deliver it nothing.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Mapping

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeci_mqtt.bus.address import BrokerAddress, TlsFiles
from edgeci_mqtt.bus.protocol import Connected, Disconnected, Event, Inbound, checked_frames
from edgeci_mqtt.errors import TransportError
from edgeci_mqtt.wire import CONTENT_TYPE

__all__ = ["MESSAGE_OVERHEAD", "MqttBus", "queued_cost"]

log = logging.getLogger(__name__)

MAX_QUEUED_BYTES = 256 << 20
"""Payload bytes received and not yet read, at most (a reader slower than a flood drops the rest)."""
_SESSION_TAKEN_OVER = 0x8E
_SHORT_SESSION_S, _TAKEOVERS = 5.0, 3
"""A session cut within 5 s of starting, three times in a row, is taken to be a takeover loop."""
_REFUSED_FOR_GOOD = {0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C}
"""CONNACK codes a retry cannot change: protocol, client id, login, not authorised, banned, auth method."""


MESSAGE_OVERHEAD = 512
"""Bytes a queued message costs beyond its payload and topic (its Python objects): empty
messages are not free, so a flood of them is bounded too."""


def queued_cost(topic: str, payload_bytes: int) -> int:
    """What one received message counts against the bounds of what may wait unread."""
    return payload_bytes + len(topic) + MESSAGE_OVERHEAD


class _Inbox(queue.Queue[Event]):
    """The events queue, counting the payload bytes it holds (under the queue's own lock), in
    all and by the first of ``limits``' filters each topic matches."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        super().__init__()
        self.bytes = 0
        self.limits = dict(limits)
        self.by_filter = dict.fromkeys(self.limits, 0)

    def filter_of(self, topic: str) -> str | None:
        return next((f for f in self.limits if paho.topic_matches_sub(f, topic)), None)

    def _count(self, item: Event, sign: int) -> None:
        if isinstance(item, Inbound):
            cost = sign * queued_cost(item.topic, len(item.payload))
            self.bytes += cost
            matched = self.filter_of(item.topic) if self.limits else None
            if matched is not None:
                self.by_filter[matched] += cost

    def _put(self, item: Event) -> None:
        super()._put(item)
        self._count(item, 1)

    def _get(self) -> Event:
        item = super()._get()
        self._count(item, -1)
        return item

    def room(self, topic: str, payload_bytes: int, total: int) -> bool:
        """Whether one more message on ``topic`` stays within ``total`` and its filter's limit."""
        size = queued_cost(topic, payload_bytes)
        with self.mutex:
            if self.bytes + size > total:
                return False
            matched = self.filter_of(topic) if self.limits else None
            return matched is None or self.by_filter[matched] + size <= self.limits[matched]


class MqttBus:
    """One MQTT v5 session with a real broker. Read :attr:`events`; call :meth:`publish` from any thread.

    Payloads waiting to be read are bounded (``max_queued_bytes``, and ``queued_limits``
    by topic filter): past it, messages are dropped and counted (:attr:`dropped`), so a
    flood faster than the reader costs no more memory than that. (A device bounds what
    other devices' credentials may leave waiting far below what its orchestrators may:
    stage weights come in bursts of tens of MB.)
    """

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str | None = None,
        tls: TlsFiles | None = None,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        require_subscriptions: bool = False,
        queued_limits: Mapping[str, int] | None = None,
    ) -> None:
        """``client_id`` defaults to the user name: the broker binds every user to a client id of its name.
        ``require_subscriptions``: :meth:`start` fails when the broker refuses any filter
        subscribed to before it (the credential may not act in the role that needs them)."""
        client_id = client_id or address.username
        if not client_id:
            raise TransportError(f"a session with {address} needs a user name or a client id")
        self.address, self.client_id = address, client_id
        self._inbox = _Inbox(queued_limits or {})
        self.events: queue.Queue[Event] = self._inbox
        self.max_queued_bytes, self.dropped = max_queued_bytes, 0
        self.connected = threading.Event()
        self._settled = threading.Event()  # connected, or refused for good
        self._filters: dict[str, int] = {}
        self.require_subscriptions = require_subscriptions
        self._suback_pending: dict[int, str] = {}  # mid -> filter, SUBACK not in yet
        self._subscribed = threading.Event()  # every subscription of the first session answered
        self.refused: dict[str, str] = {}
        """Filters the broker refused (in any session) and its reason."""
        self._lock = threading.Lock()
        self._refused: str | None = None
        self._session_started, self._short_sessions = 0.0, 0
        self._ended = False
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if address.username:
            self._client.username_pw_set(address.username, address.password)
        tls = tls or TlsFiles()
        if (tls.cert_file or tls.key_file or tls.ca_file) and not address.tls:
            raise TransportError(f"certificate files are for mqtts:// addresses, not {address}")
        if address.tls:
            try:
                self._client.tls_set(
                    ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file, cert_reqs=ssl.CERT_REQUIRED
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise TransportError(f"{client_id}: cannot use the TLS files {tls}: {exc}") from exc
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        if address.tls:  # with a log callback paho formats a line for every packet: TLS alerts only
            self._client.on_log = self._on_log

    def will(self, topic: str, payload: bytes) -> None:
        self._client.will_set(topic, payload, qos=1, retain=True, properties=_properties())

    # paho's thread: only enqueue
    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        sock = client.socket()
        if isinstance(sock, socket.socket):  # paho leaves Nagle on: small messages would wait ~40 ms
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if getattr(reason, "is_failure", False):
            why = f"broker {self.address} refused the connection: {reason}"
            if getattr(reason, "value", None) in _REFUSED_FOR_GOOD:
                self._end(client, why)
            else:  # busy, unavailable, ...: paho retries
                self._refused = why
                log.warning("%s: %s", self.client_id, why)
            return
        with self._lock:  # a subscribe() meanwhile is either in this list or sees connected set
            for topic, qos in self._filters.items():
                self._subscribe_now(topic, qos)
            if not self._suback_pending:
                self._subscribed.set()
            self.connected.set()
        self._session_started = time.monotonic()
        self._settled.set()
        self.events.put(Connected())

    def _on_disconnect(
        self, client: paho.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self.connected.clear()
        code = getattr(reason, "value", None)
        if code == 0:  # our own stop()
            return
        # Mosquitto 2.0 closes a taken-over session without telling why, so a takeover
        # shows as sessions cut short one after another, each connection kicking the other.
        short = time.monotonic() - self._session_started < _SHORT_SESSION_S
        self._short_sessions = self._short_sessions + 1 if short else 0
        if code == _SESSION_TAKEN_OVER or self._short_sessions >= _TAKEOVERS:
            self._end(
                client,
                f"another connection keeps logging in with client id {self.client_id!r} and taking this session "
                "over (each process needs a credential of its own)",
            )
        else:
            self.events.put(Disconnected(str(reason)))

    def _on_log(self, client: paho.Client, userdata: object, level: int, text: str) -> None:
        """paho reports a TLS alert after the handshake (a certificate the broker requires
        and did not get, or one it does not trust) only as a socket error in its log. Only an
        alert or a certificate error ends the session: a TLS connection cut by a broker
        restart (an EOF, a reset) must still reconnect."""
        if level == paho.MQTT_LOG_ERR and _tls_for_good(text) and not self._ended:
            self._end(client, f"TLS with broker {self.address} failed: {text}")

    def _end(self, client: paho.Client, why: str) -> None:
        """No reconnection: the same login would be refused again, or would take the id back."""
        self._refused, self._ended = why, True
        log.error("%s: %s", self.client_id, why)
        # paho's own thread cannot stop itself (its reconnect state is set after this callback):
        # another thread ends its loop, which checks before each retry.
        threading.Thread(target=client.loop_stop, name=f"{self.client_id}-end", daemon=True).start()
        self._settled.set()
        self.events.put(Disconnected(why, final=True))

    def _subscribe_now(self, topic: str, qos: int) -> None:
        """Send a SUBSCRIBE and remember which filter its SUBACK answers (caller holds the lock)."""
        result, mid = self._client.subscribe(topic, options=SubscribeOptions(qos=qos))
        if result == paho.MQTT_ERR_SUCCESS and mid is not None:
            self._suback_pending[mid] = topic

    def _on_subscribe(
        self, client: paho.Client, userdata: object, mid: int, reasons: list[ReasonCode], props: Properties | None
    ) -> None:
        with self._lock:
            topic = self._suback_pending.pop(mid, None)
            if topic is not None:
                refusal = next((str(r) for r in reasons if r.is_failure), None)
                if refusal is not None:
                    self.refused[topic] = refusal
                    log.error("%s: the broker refused the subscription to %s: %s", self.client_id, topic, refusal)
            if not self._suback_pending:
                self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if not self._inbox.room(message.topic, len(message.payload), self.max_queued_bytes):
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning(
                    "%s: dropped %d message(s): over what may wait to be read (the last on %s)",
                    self.client_id,
                    self.dropped,
                    message.topic[:200],
                )
            return
        props = message.properties
        self.events.put(
            Inbound(
                message.topic,
                bytes(message.payload),
                bool(message.retain),
                getattr(props, "ResponseTopic", None) if props is not None else None,
                getattr(props, "CorrelationData", None) if props is not None else None,
            )
        )

    def start(self, timeout: float = 10.0) -> None:
        """Connect and wait up to ``timeout`` for the first session. Over TLS the first attempt
        is made here, so a certificate no retry can change is an error at once; anything else
        (a broker not listening yet) is retried in the background."""
        host, port = self.address.host, self.address.port
        if self.address.tls:
            try:
                self._client.connect(host, port, keepalive=15)
            except ssl.SSLError as exc:
                if _tls_for_good(f"SSL {exc!r}"):
                    raise TransportError(f"{self.client_id}: TLS with {self.address} failed: {exc}") from exc
                self._client.connect_async(host, port, keepalive=15)
            except OSError:
                self._client.connect_async(host, port, keepalive=15)
        else:
            self._client.connect_async(host, port, keepalive=15)
        self._client.loop_start()
        started = time.monotonic()
        self._settled.wait(timeout)  # a refusal ends the wait at once
        if not self.connected.is_set():
            reason = self._refused or f"no answer within {timeout:.0f} s"
            self.stop()
            raise TransportError(f"{self.client_id}: cannot connect to {self.address}: {reason}")
        if self.require_subscriptions:
            self._check_subscriptions(max(0.0, timeout - (time.monotonic() - started)))

    def wait_subscribed(self, timeout: float) -> bool:
        """Whether the broker answered every subscription of the first session (granted or
        refused: :attr:`refused` says which) within ``timeout``."""
        return self._subscribed.wait(timeout)

    def _check_subscriptions(self, timeout: float) -> None:
        """Wait for the first session's SUBACKs; :class:`TransportError` naming every refused filter."""
        answered = self.wait_subscribed(timeout)
        with self._lock:
            refused, unanswered = dict(self.refused), sorted(self._suback_pending.values())
        if refused:
            self.stop()
            named = ", ".join(f"{topic} ({why})" for topic, why in sorted(refused.items()))
            raise TransportError(
                f"{self.client_id}: the broker {self.address} refused the subscription(s) this process needs: "
                f"{named}; its credential may not act in this role (is it the right user's file?)"
            )
        if not answered:
            self.stop()
            raise TransportError(
                f"{self.client_id}: the broker {self.address} did not answer the subscription(s) "
                f"{', '.join(unanswered)} within {timeout:.0f} s"
            )

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        with self._lock:
            self._filters[topic] = qos
            if self.connected.is_set():
                self._subscribe_now(topic, qos)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        wait: float | None = None,
    ) -> None:
        """Publish, split into chunk frames if over the limit; retained payloads must fit one frame."""
        for part in checked_frames(topic, payload, retain):
            try:
                info = self._client.publish(topic, part, qos, retain, _properties(response_topic, correlation))
                if wait is not None:
                    info.wait_for_publish(wait)
            except (RuntimeError, ValueError) as exc:  # paho: not connected, or a topic it refuses
                raise TransportError(f"{self.client_id}: cannot publish on {topic[:200]}: {exc}") from exc


def _properties(response_topic: str | None = None, correlation: bytes | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = CONTENT_TYPE
    if response_topic:
        props.ResponseTopic = response_topic
    if correlation:
        props.CorrelationData = correlation
    return props


def _tls_for_good(text: str) -> bool:
    """Whether a TLS error (as paho logs it) is one no retry can change: an alert from the
    broker or a certificate error. An EOF or a reset (a broker restarting) is not."""
    upper = text.upper()
    return "SSL" in upper and ("ALERT" in upper or "CERTIFICATE" in upper)
