"""A terminal's link to the engines through an MQTT v5 broker: the same requests as over TCP, another pipe.

The terminal logs in to the broker as itself (user and client id are its terminal id), publishes each ISO
8583 request to `pos/{terminal_id}/request` (QoS 1) with its response topic `pos/{terminal_id}/response`
and fresh correlation data, and matches answers by that correlation data. Presence: a retained `online`
on `pos/{terminal_id}/status` once connected, and a last will saying `offline` should the link drop;
a clean close says `offline` itself (the broker sends the will only when the link breaks).

An engine can die with a request in its hands. When no answer comes within `retry_after_s`, the terminal
publishes the very same bytes again (same STAN and transmission time, same correlation data), then again
after twice that pause, and so on until its timeout: whichever
engine gets it, the store's idempotency key answers it with the first outcome, never a second hold.
Each request carries a Message Expiry Interval, so a request the terminal has given up on is never
delivered late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from processor.iso8583 import MessageFormatError, decode
from terminal_sim.iso_client import ResponseTimeout, checked, outgoing

if TYPE_CHECKING:
    from terminal_sim.pos import PosTerminal

log = logging.getLogger("terminal_sim.mqtt")

ONLINE = b"online"
OFFLINE = b"offline"


@dataclass(frozen=True, slots=True)
class Broker:
    """Where the broker is, from mqtt://[USER[:PASSWORD]@]HOST[:PORT]."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "Broker":
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"expected mqtt://[USER:PASSWORD@]HOST:PORT, got {url.split('@')[-1]!r}")
        return cls(parts.hostname, parts.port or 1883, unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)


def request_topic(terminal_id: str) -> str:
    return f"pos/{terminal_id}/request"


def response_topic(terminal_id: str) -> str:
    return f"pos/{terminal_id}/response"


def status_topic(terminal_id: str) -> str:
    return f"pos/{terminal_id}/status"


def _publish_properties(**values: Any) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


class MqttTerminalConnection:
    """One terminal's broker connection; `request()` publishes and waits for the answer with its correlation data."""

    def __init__(self, client: Any, terminal_id: str, *, timeout_s: float, retry_after_s: float, max_in_flight: int) -> None:
        self._client = client
        self.terminal_id = terminal_id
        self.terminals: dict[str, PosTerminal] = {}
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self._request_topic = request_topic(terminal_id)
        self._response_topic = response_topic(terminal_id)
        self._closed = False
        self.unmatched = 0
        self.retries = 0
        self._reader = asyncio.create_task(self._read_answers())

    @classmethod
    async def connect(
        cls,
        url: str,
        terminal_id: str,
        *,
        password: str | None = None,
        timeout_s: float = 5.0,
        retry_after_s: float = 1.0,
        max_in_flight: int = 64,
    ) -> "MqttTerminalConnection":
        """Log in as `terminal_id` (the password from the URL, else `password`), subscribe, say online."""
        import aiomqtt

        broker = Broker.from_url(url)
        if broker.username not in (None, terminal_id):
            raise ValueError(f"the broker user in the URL ({broker.username}) is not terminal {terminal_id}")
        will = aiomqtt.Will(status_topic(terminal_id), OFFLINE, qos=1, retain=True)
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=terminal_id,
            password=broker.password or password,
            identifier=terminal_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=10,
            timeout=timeout_s,
            clean_start=True,
            max_queued_incoming_messages=max_in_flight * 4,
            # One small packet per request: Nagle's algorithm would hold each for a delayed ACK (~40 ms).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            logger=logging.getLogger("terminal_sim.mqtt.client"),
        )
        client.pending_calls_threshold = max_in_flight * 2
        try:
            await asyncio.wait_for(client.__aenter__(), timeout=timeout_s)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise ConnectionError(f"terminal {terminal_id} could not log in to the broker at "
                                  f"{broker.host}:{broker.port}: {exc or 'timed out'}") from None
        try:
            await client.subscribe(response_topic(terminal_id), qos=1)
            await client.publish(status_topic(terminal_id), ONLINE, qos=1, retain=True)
        except aiomqtt.MqttError as exc:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise ConnectionError(f"terminal {terminal_id}: broker refused the subscription ({exc})") from None
        return cls(client, terminal_id, timeout_s=timeout_s, retry_after_s=retry_after_s, max_in_flight=max_in_flight)

    @property
    def closed(self) -> bool:
        return self._closed

    def add_terminal(self, terminal: "PosTerminal") -> None:
        """MAC this terminal's requests and check its answers' MACs (it must be the one logged in)."""
        if terminal.ipek is not None and terminal.terminal_id.strip() == self.terminal_id:
            self.terminals[self.terminal_id] = terminal

    async def request(self, fields: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        """Publish one request and return its decoded answer; ResponseTimeout when none comes in time.

        Unanswered after `retry_after_s`, the same bytes go out again (an engine may have died holding them).
        """
        if self._closed:
            raise ConnectionError("connection closed")
        payload, terminal, ksn = outgoing(self.terminals, fields)
        raw = await self.send_raw(payload, str(fields.get("11")), timeout_s=timeout_s)
        try:
            answer = decode(raw)
        except MessageFormatError as exc:
            raise ConnectionError(f"an answer that does not decode: {exc}") from None
        return checked(answer, raw, terminal, ksn)

    async def send_raw(self, payload: bytes, stan: str, *, timeout_s: float | None = None) -> bytes:
        """Publish a message already encoded (and MACed) and return its answer undecoded; ResponseTimeout
        when none comes in time (the same bytes go out again after `retry_after_s`, as for request())."""
        import aiomqtt

        if self._closed:
            raise ConnectionError("connection closed")
        timeout_s = timeout_s or self.timeout_s
        correlation = secrets.token_bytes(8)
        props = _publish_properties(
            ResponseTopic=self._response_topic,
            CorrelationData=correlation,
            MessageExpiryInterval=max(1, math.ceil(timeout_s)),
        )
        async with self._slots:
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._waiting[correlation] = future
            try:
                async with asyncio.timeout(timeout_s):
                    # The pause before each copy doubles: an engine that is only slow is not sent the same
                    # request every second (each copy is work for whichever engine takes it).
                    wait_s = self.retry_after_s
                    while True:
                        await self._client.publish(self._request_topic, payload, qos=1, properties=props)
                        done, _ = await asyncio.wait({future}, timeout=wait_s)
                        if done:
                            return future.result()
                        self.retries += 1
                        wait_s *= 2
            except TimeoutError:
                raise ResponseTimeout(f"no answer to STAN {stan} within {timeout_s:g} s") from None
            except aiomqtt.MqttError as exc:
                raise ConnectionError(f"broker connection lost: {exc}") from None
            finally:
                self._waiting.pop(correlation, None)

    async def _read_answers(self) -> None:
        import aiomqtt

        error: BaseException = ConnectionError("broker connection closed")
        try:
            async for message in self._client.messages:
                correlation = getattr(message.properties, "CorrelationData", None)
                future = self._waiting.get(bytes(correlation)) if correlation else None
                if future is None or future.done():
                    self.unmatched += 1  # an answer to a copy already answered, or to a request given up on
                    continue
                future.set_result(bytes(message.payload))
        except aiomqtt.MqttError as exc:
            error = ConnectionError(f"broker connection lost: {exc}")
        except asyncio.CancelledError:
            raise
        finally:
            self._closed = True
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(error)

    async def close(self) -> None:
        """Say offline (a clean disconnect does not fire the will), then disconnect."""
        was_closed, self._closed = self._closed, True
        if not was_closed:
            with contextlib.suppress(Exception):
                await self._client.publish(status_topic(self.terminal_id), OFFLINE, qos=1, retain=True, timeout=2.0)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.__aexit__(None, None, None), timeout=2.0)

    async def __aenter__(self) -> "MqttTerminalConnection":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
