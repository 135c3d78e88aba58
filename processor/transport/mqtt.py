"""ISO 8583 over MQTT v5: terminals publish requests to the broker, engines in a shared subscription answer.

Topics (the contract; the README documents them):

    pos/{terminal_id}/request    a terminal's request: the ISO 8583 bytes, QoS 1, with a response topic and
                                 correlation data (MQTT v5 properties)
    pos/{terminal_id}/response   the engine's answer, QoS 1, with the request's correlation data
    pos/{terminal_id}/status     presence: `online` (retained) while connected; the last will says `offline`

Every engine process subscribes to `$share/engines/pos/+/request`, so the broker hands each request to one
of them. The broker has authenticated the publisher and lets a terminal publish only to its own request
topic, so the topic's terminal id is the sender's identity: it goes to the engine with the payload, and the
engine refuses a request whose DE 41 names another terminal. The answer goes only to the sender's own
response topic, whatever response topic a request asks for.

Bounds: at most `max_in_flight` requests are being answered at once; up to `max_queued` more wait in the
adapter, and beyond that a request is dropped with a warning. (Mosquitto 2.0.11 replenishes a client's
Receive Maximum quota twice per acknowledgement, so the broker cannot be trusted to hold requests back.)
A dropped request, like one held by an engine that dies, is sent again by its terminal, and the store's
idempotency key gives the copy the first answer: nothing is lost or done twice, it only comes later.
A copy that reaches the engine still answering the original (same terminal, same correlation data) is
dropped: the answer under way serves both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger("processor.transport.mqtt")

SHARE_GROUP = "engines"
REQUEST_FILTER = "pos/+/request"
# A topic level we accept as a terminal id: DE 41 is 8 characters; no MQTT separators or wildcards.
TERMINAL_ID = re.compile(r"[A-Za-z0-9._-]{1,8}")
MAX_CORRELATION_BYTES = 64

SenderHandler = Callable[..., Awaitable[bytes | None]]
# Requests and answers are single small packets: Nagle's algorithm would hold each for a delayed ACK.
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class MqttUnavailable(ConnectionError):
    """The broker refused or could not be reached; the message says which and what to check."""


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where a broker is and who we are to it, from `mqtt://USER:PASSWORD@HOST:PORT`."""

    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> "MqttEndpoint":
        """Parse an mqtt:// URL (user and password percent-encoded); ValueError says what is wrong."""
        parts = urlsplit(url)
        if parts.scheme != "mqtt":
            raise ValueError(f"MQTT URL must start with mqtt:// (got {parts.scheme or 'no scheme'}://)")
        if not parts.hostname:
            raise ValueError("MQTT URL has no host: write mqtt://USER:PASSWORD@HOST:PORT")
        try:
            port = parts.port or 1883
        except ValueError:
            raise ValueError("MQTT URL has a port that is not a number") from None
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def safe(self) -> str:
        """The endpoint for logs: no password."""
        who = f"{self.username}@" if self.username else ""
        return f"mqtt://{who}{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class MqttLimits:
    """Bounds of the MQTT adapter."""

    max_payload_bytes: int = 8192
    max_in_flight: int = 256  # requests being answered at once
    max_queued: int = 4096  # requests received and waiting for a slot; more are dropped (the terminal retries)
    handler_timeout_s: float = 10.0
    publish_timeout_s: float = 5.0
    connect_timeout_s: float = 10.0
    keepalive_s: int = 10
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 5.0
    answer_expiry_s: int = 30  # an answer nobody collected in this time is dropped by the broker
    unsubscribe_timeout_s: float = 2.0  # at shutdown
    disconnect_timeout_s: float = 3.0  # at shutdown, after the requests in flight


def engine_client_id() -> str:
    """Unique and unguessable: a client id taken by another connection would disconnect this one."""
    return f"engine-{socket.gethostname()[:20]}-{os.getpid()}-{secrets.token_hex(4)}"


def connect_failure(exc: BaseException, endpoint: MqttEndpoint) -> MqttUnavailable:
    """One line for an operator: refused credentials, or nothing listening."""
    text = str(exc)
    if "subscription to" in text:
        return MqttUnavailable(f"broker {endpoint.safe()}: {text}")
    if "ot authorized" in text or "credentials" in text.lower() or "135" in text or "134" in text:
        return MqttUnavailable(f"broker {endpoint.safe()} refused the credentials: check the user and password in the URL")
    return MqttUnavailable(f"broker {endpoint.safe()} unreachable ({text or type(exc).__name__}): is it running?")


def mqtt_properties(packet: str, **values: Any) -> Any:
    """paho `Properties` of a CONNECT or PUBLISH packet, e.g. mqtt_properties("PUBLISH", CorrelationData=b"..")."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(getattr(PacketTypes, packet))
    for name, value in values.items():
        setattr(props, name, value)
    return props


class MqttServer:
    """Consumes terminals' requests from the shared subscription and publishes the engine's answers."""

    def __init__(
        self,
        handler: SenderHandler,
        url: str,
        *,
        limits: MqttLimits | None = None,
        group: str = SHARE_GROUP,
    ) -> None:
        self.handler = handler
        self.endpoint = MqttEndpoint.parse(url)
        self.limits = limits or MqttLimits()
        self.group = group
        self.client_id = engine_client_id()
        self.stats = {
            "requests": 0, "answers": 0, "refused": 0, "failed": 0, "connects": 0, "copies": 0, "dropped": 0,
        }
        # (terminal id, correlation data) of the requests being answered: at most max_in_flight of them.
        self._in_flight: set[tuple[str, bytes]] = set()
        self._client: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.limits.max_in_flight)
        self._runner: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._first_failure: BaseException | None = None
        self._stopping = False

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    async def start(self) -> None:
        """Connect and subscribe; MqttUnavailable when the first connection fails (later drops reconnect,
        with a growing pause up to reconnect_max_s)."""
        self._runner = asyncio.create_task(self._run(), name="mqtt-engine")
        waiter = asyncio.create_task(self._subscribed.wait())
        await asyncio.wait({waiter, self._runner}, timeout=self.limits.connect_timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._subscribed.is_set():
            return
        await self.close()
        failure = self._first_failure or TimeoutError(f"no connection within {self.limits.connect_timeout_s:g} s")
        raise connect_failure(failure, self.endpoint)

    def _client_for(self) -> Any:
        import aiomqtt

        client = aiomqtt.Client(
            self.endpoint.host,
            self.endpoint.port,
            username=self.endpoint.username,
            password=self.endpoint.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=self.limits.keepalive_s,
            timeout=self.limits.publish_timeout_s,
            clean_start=True,
            max_queued_incoming_messages=self.limits.max_queued,
            socket_options=NO_DELAY,
            logger=logging.getLogger("processor.transport.mqtt.client"),
        )
        client.pending_calls_threshold = self.limits.max_in_flight + 16  # one answer being published per slot
        return client

    async def _run(self) -> None:
        import aiomqtt

        delay = self.limits.reconnect_min_s
        while not self._stopping:
            try:
                async with self._client_for() as client:
                    self._client = client
                    granted = await client.subscribe(f"$share/{self.group}/{REQUEST_FILTER}", qos=1)
                    if any(getattr(code, "value", code) >= 0x80 for code in granted):
                        raise aiomqtt.MqttError(f"subscription to $share/{self.group}/{REQUEST_FILTER} refused: "
                                                f"is {self.endpoint.username!r} the broker's engine account?")
                    self.stats["connects"] += 1
                    self._subscribed.set()
                    log.info("%s subscribed to $share/%s/%s as %s", self.endpoint.safe(), self.group, REQUEST_FILTER,
                             self.client_id)
                    delay = self.limits.reconnect_min_s
                    async for message in client.messages:
                        if self._stopping:
                            # Received (and acknowledged) but not started: its terminal publishes it again
                            # after its retry interval and another engine answers; nothing was applied.
                            self.stats["dropped"] += 1
                            continue
                        self.stats["requests"] += 1
                        await self._slots.acquire()  # while all slots are busy, requests wait in the bounded queue
                        task = asyncio.create_task(self._answer(client, message))
                        self._tasks.add(task)
                        task.add_done_callback(self._done)
            except aiomqtt.MqttError as exc:
                if self._stopping or self.stats["connects"] == 0:
                    # The first connection decides whether the engine starts: start() reports this failure.
                    self._first_failure = exc
                    return
                log.warning("broker %s: %s; reconnecting in %.1f s", self.endpoint.safe(), exc, delay)
            finally:
                self._client = None
                self._subscribed.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.limits.reconnect_max_s)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    def _target(self, message: Any) -> tuple[str, str, bytes] | None:
        """(terminal id, response topic, correlation data) of a well-formed request, else None (logged)."""
        levels = str(message.topic).split("/")
        terminal_id = levels[1] if len(levels) == 3 else ""
        if not TERMINAL_ID.fullmatch(terminal_id):
            log.warning("request on topic %r: not pos/{terminal_id}/request; dropped", str(message.topic)[:80])
            return None
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        own = f"pos/{terminal_id}/response"
        if not response_topic or not (response_topic == own or response_topic.startswith(own + "/")):
            log.warning("terminal %s asked for its answer on %r, not under %s; dropped", terminal_id,
                        str(response_topic)[:80], own)
            return None
        if not correlation or len(correlation) > MAX_CORRELATION_BYTES:
            log.warning("terminal %s sent a request without correlation data (1-%d bytes); dropped", terminal_id,
                        MAX_CORRELATION_BYTES)
            return None
        if len(message.payload) > self.limits.max_payload_bytes:
            log.warning("terminal %s sent %d bytes (limit %d); dropped", terminal_id, len(message.payload),
                        self.limits.max_payload_bytes)
            return None
        return terminal_id, response_topic, bytes(correlation)

    async def _answer(self, client: Any, message: Any) -> None:
        import aiomqtt

        target = self._target(message)
        if target is None:
            self.stats["refused"] += 1
            return
        terminal_id, response_topic, correlation = target
        key = (terminal_id, correlation)
        if key in self._in_flight:
            # A terminal's retransmission of a request this engine is still answering: the answer under way
            # carries the same correlation data, so the copy would only be work done twice.
            self.stats["copies"] += 1
            return
        self._in_flight.add(key)
        try:
            async with asyncio.timeout(self.limits.handler_timeout_s):
                answer = await self.handler(bytes(message.payload), sender=terminal_id)
        except TimeoutError:
            self.stats["failed"] += 1
            log.error("terminal %s: request not answered within %.1f s", terminal_id, self.limits.handler_timeout_s)
            return
        except Exception:
            self.stats["failed"] += 1
            log.exception("terminal %s: request failed", terminal_id)
            return
        finally:
            self._in_flight.discard(key)
        if answer is None:
            return
        props = mqtt_properties("PUBLISH", CorrelationData=correlation, MessageExpiryInterval=self.limits.answer_expiry_s)
        try:
            await client.publish(response_topic, answer, qos=1, properties=props)
        except aiomqtt.MqttError as exc:
            # The terminal asks again; the store answers its retransmission with the same outcome.
            self.stats["failed"] += 1
            log.warning("terminal %s: answer not published (%s)", terminal_id, exc)
            return
        self.stats["answers"] += 1

    async def stop_accepting(self) -> None:
        """Shutdown, first step: leave the shared subscription (the broker sends new requests to the other
        engines) and start no request already received; those in flight go on. Takes at most
        `unsubscribe_timeout_s`."""
        if self._stopping:
            return
        self._stopping = True
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                await client.unsubscribe(
                    f"$share/{self.group}/{REQUEST_FILTER}", timeout=self.limits.unsubscribe_timeout_s
                )

    def in_flight(self) -> list[asyncio.Task[None]]:
        return [task for task in self._tasks if not task.done()]

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop taking requests (other engines get them), finish those in flight (within `timeout_s`, by
        default the handler timeout), disconnect (within `disconnect_timeout_s`)."""
        await self.stop_accepting()
        pending = self.in_flight()
        if pending:
            wait_s = self.limits.handler_timeout_s if timeout_s is None else timeout_s
            _, late = await asyncio.wait(pending, timeout=max(wait_s, 0.0))
            for task in late:
                task.cancel()
        if self._runner is not None:
            self._runner.cancel()  # leaving `async with client` disconnects, bounded by the client's timeout
            await asyncio.wait({self._runner}, timeout=self.limits.disconnect_timeout_s)
            if not self._runner.done():
                log.warning("broker %s: no clean disconnect within %.1f s; leaving the session to expire",
                            self.endpoint.safe(), self.limits.disconnect_timeout_s)


async def read_presence(url: str, *, timeout_s: float = 5.0) -> dict[str, str]:
    """Each terminal's last status on the broker (`online` or `offline`), from the retained pos/+/status.

    The retained messages follow the SUBACK of a subscription in order; a second SUBSCRIBE of the same
    filter (retained messages not sent again) is answered only after them, so once its SUBACK is in,
    every retained status is in the queue. QoS 0 keeps them clear of any in-flight window.
    """
    import aiomqtt
    from paho.mqtt.subscribeoptions import SubscribeOptions

    endpoint = MqttEndpoint.parse(url)
    client = aiomqtt.Client(
        endpoint.host, endpoint.port, username=endpoint.username, password=endpoint.password,
        identifier=f"presence-{secrets.token_hex(6)}", protocol=aiomqtt.ProtocolVersion.V5, timeout=timeout_s,
        socket_options=NO_DELAY,
    )
    statuses: dict[str, str] = {}
    try:
        async with client:
            await client.subscribe("pos/+/status", qos=0)
            await client.subscribe("pos/+/status", options=SubscribeOptions(qos=0, retainHandling=2))
            while len(client.messages):
                message = await client.messages.__anext__()
                levels = str(message.topic).split("/")
                if len(levels) == 3 and TERMINAL_ID.fullmatch(levels[1]):
                    statuses[levels[1]] = bytes(message.payload).decode("ascii", "replace")
    except aiomqtt.MqttError as exc:
        raise connect_failure(exc, endpoint) from None
    return statuses
