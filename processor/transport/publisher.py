"""Events on the broker: the outbox's committed events, published after commit to MQTT.

    processor events publish --mqtt mqtt://events:PASSWORD@HOST:PORT

Topics (the README documents them; the broker's ACL lets a cardholder's account read only its own):

    events/cardholders/{cardholder_id}/{type, dots as levels}   every event of a cardholder, e.g.
                                                                 events/cardholders/7/card/authorization
    events/operators/{type, dots as levels}                     operators' events (settlement/finished,
                                                                 authorization/unmatched) and a copy of every
                                                                 card decision and card status change

Payload: the outbox's JSON envelope (`processor.events.outbox.Event.envelope`, `schema_version` 1). QoS 1.

Delivery is at least once and nothing is lost while the broker is away. The publisher reads the outbox
after its consumer position (`event_consumers`, by name), publishes a batch, waits for every PUBACK, and
only then moves its position forward in the database. A broker that goes down (or a publisher that dies)
means the unacknowledged part of the batch is published again later: a consumer can see an event twice
and drops the copy by its event id. Events of one publisher go out in id order on one connection.

Bounds: at most `batch` events in memory, at most `in_flight` publishes awaiting their PUBACK, each
publish and connect with a timeout, reconnects with a pause that doubles up to `backoff_max_s`.
One process publishes a consumer at a time (`run_as_the_one`: a lease in the store); `processor serve
--events-mqtt URL` runs it in every engine, and `processor events publish` as a process of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from processor.events.outbox import Event, advance_consumer, consumer_position, last_id, read_after
from processor.transport.mqtt import NO_DELAY, MqttEndpoint, MqttUnavailable, connect_failure

log = logging.getLogger("processor.transport.publisher")

DEFAULT_CONSUMER = "mqtt"
LEASE_RETRY_S = 2.0  # how soon a standing-by publisher takes over from one that stopped or died
# Card decisions and card status changes are the operators' business too: they get a copy.
OPERATOR_COPIES = frozenset({"card.authorization", "card.reversal", "card.status"})


@dataclass(frozen=True, slots=True)
class PublisherLimits:
    """Bounds of the publisher."""

    batch: int = 500  # events read from the outbox at once (all of them in memory)
    in_flight: int = 128  # publishes awaiting their PUBACK at once
    poll_interval_s: float = 0.05  # how often an idle publisher looks for new events
    publish_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    keepalive_s: int = 10
    backoff_min_s: float = 0.2
    backoff_max_s: float = 5.0


def topics(event: Event) -> list[str]:
    """The topics one event is published to (none for an audience we do not know: deny by default)."""
    kind = event.type.replace(".", "/")
    out = []
    if event.audience == "cardholder" and event.cardholder_id is not None:
        out.append(f"events/cardholders/{event.cardholder_id}/{kind}")
        if event.type in OPERATOR_COPIES:
            out.append(f"events/operators/{kind}")
    elif event.audience == "operator":
        out.append(f"events/operators/{kind}")
    return out


@dataclass
class PublisherStats:
    """What the publisher has done, for its progress line and its health."""

    position: int = 0  # every event up to this id is on the broker (and recorded so in the database)
    newest: int = 0  # the newest committed event id seen
    events: int = 0  # events published (a copy after a reconnect counts again)
    messages: int = 0  # MQTT messages (an event can go to two topics)
    connects: int = 0
    failures: int = 0
    connected: bool = False
    last_error: str = ""
    started_at: float = field(default_factory=time.monotonic)

    @property
    def backlog(self) -> int:
        return max(0, self.newest - self.position)

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "newest_event_id": self.newest, "backlog": self.backlog,
                "events": self.events, "messages": self.messages, "connects": self.connects,
                "failures": self.failures, "connected": self.connected, "last_error": self.last_error}


class EventPublisher:
    """Publishes the outbox of `store` to the broker at `url` (the `events` account), from position `name`."""

    def __init__(self, store: Any, url: str, *, name: str = DEFAULT_CONSUMER, limits: PublisherLimits | None = None,
                 on_progress: Callable[[PublisherStats], None] | None = None) -> None:
        self.store = store
        self.endpoint = MqttEndpoint.parse(url)
        self.name = name
        self.limits = limits or PublisherLimits()
        self.on_progress = on_progress
        self.stats = PublisherStats()
        self.client_id = f"events-{name}-{secrets.token_hex(4)}"
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in hand (bounded by the publish timeout) and return from `run`."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def run_as_the_one(self, *, require_first_connect: bool = True, retry_s: float = LEASE_RETRY_S) -> None:
        """`run`, but only while this process holds its consumer's lease in the store: of several processes
        publishing one consumer (say, every engine of a deployment), one publishes and the others stand by,
        taking over within `retry_s` when it stops or dies. Each event then goes out once, and once more at
        most after a publisher died between the PUBACK and the recorded position (a copy, dropped by id)."""
        announced = False
        while not self.stopped:
            lease = await self.store.try_lease(f"events-publisher:{self.name}")
            if lease is None:
                if not announced:
                    log.info("event publisher %r: another process publishes; standing by", self.name)
                    announced = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(retry_s):
                        await self._stop.wait()
                continue
            log.info("event publisher %r: this process publishes", self.name)
            try:
                await self.run(require_first_connect=require_first_connect)
            finally:
                await lease.release()

    async def run(self, *, require_first_connect: bool = True) -> None:
        """Publish until `stop()`; MqttUnavailable when the very first connection fails and it is required.

        Later losses of the broker (or of the database) are retried with a growing pause: what was not
        acknowledged is published again from the position recorded in the database.
        """
        import aiomqtt

        delay = self.limits.backoff_min_s
        while not self._stop.is_set():
            try:
                await self._session()
                return
            except (aiomqtt.MqttError, TimeoutError, ConnectionError, OSError) as exc:
                self.stats.failures += 1
                self.stats.last_error = str(exc) or type(exc).__name__
                if self.stats.connects == 0 and require_first_connect:
                    raise connect_failure(exc, self.endpoint) from None
                log.warning("event publisher: broker %s: %s; again in %.1f s", self.endpoint.safe(),
                            self.stats.last_error, delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database: retried like the broker, nothing was moved forward
                self.stats.failures += 1
                self.stats.last_error = str(exc) or type(exc).__name__
                log.warning("event publisher: %s; again in %.1f s", self.stats.last_error, delay)
            finally:
                self.stats.connected = False
            self._progress()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            delay = min(delay * 2, self.limits.backoff_max_s)

    def _client(self) -> Any:
        import aiomqtt

        return aiomqtt.Client(
            self.endpoint.host, self.endpoint.port, username=self.endpoint.username, password=self.endpoint.password,
            identifier=self.client_id, protocol=aiomqtt.ProtocolVersion.V5, keepalive=self.limits.keepalive_s,
            timeout=self.limits.connect_timeout_s, clean_start=True, max_inflight_messages=self.limits.in_flight,
            socket_options=NO_DELAY, logger=logging.getLogger("processor.transport.publisher.client"),
        )

    async def _session(self) -> None:
        async with self._client() as client:
            client.pending_calls_threshold = self.limits.in_flight + 16
            self.stats.connects += 1
            self.stats.connected = True
            log.info("event publisher %r connected to %s", self.name, self.endpoint.safe())
            self.stats.position = await self.store.run_query(consumer_position, self.name)
            while not self._stop.is_set():
                batch = await self.store.run_query(read_after, self.stats.position, self.limits.batch)
                if not batch:
                    self.stats.newest = max(self.stats.newest, await self.store.run_query(last_id))
                    self._progress()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.limits.poll_interval_s):
                            await self._stop.wait()
                    continue
                self.stats.newest = max(self.stats.newest, batch[-1].id)
                await self._publish(client, batch)
                # Every event of the batch is acknowledged by the broker: only now does the position move.
                self.stats.position = await self.store.run_write(advance_consumer, self.name, batch[-1].id)
                self._progress()

    async def _publish(self, client: Any, batch: list[Event]) -> None:
        messages = [(topic, event.to_json().encode()) for event in batch for topic in topics(event)]
        step = self.limits.in_flight
        for start in range(0, len(messages), step):
            # Tasks start in creation order, so the publishes leave in id order on this one connection.
            chunk = messages[start:start + step]
            async with asyncio.timeout(self.limits.publish_timeout_s):
                results = await asyncio.gather(*(client.publish(topic, payload, qos=1, timeout=self.limits.publish_timeout_s)
                                                 for topic, payload in chunk), return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            self.stats.messages += len(chunk)
        self.stats.events += len(batch)

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.stats)


async def publisher_status(store: Any, name: str = DEFAULT_CONSUMER) -> dict[str, Any]:
    """How far consumer `name` has published: its position, the newest event, the backlog between them."""
    position = await store.run_query(consumer_position, name)
    newest = await store.run_query(last_id)
    return {"consumer": name, "position": position, "newest_event_id": newest, "backlog": max(0, newest - position)}


__all__ = ["DEFAULT_CONSUMER", "EventPublisher", "MqttUnavailable", "PublisherLimits", "PublisherStats",
           "publisher_status", "topics"]
