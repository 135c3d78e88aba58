"""Running the engine: wiring settings, store, HSM, engine and transports, with a clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from hsm_sim import HsmApi
from processor import ledger
from processor.auth.engine import Engine
from processor.auth.policy import Policy
from processor.config import Settings
from processor.ledger import Store, StoreInterface
from processor.transport.mqtt import MqttLimits, MqttServer
from processor.transport.tcp import TcpLimits, TcpServer

if TYPE_CHECKING:
    from processor.transport.publisher import EventPublisher

log = logging.getLogger("processor.server")
HOLD_EXPIRY_INTERVAL_S = 60.0

# From SIGTERM to exit, each step bounded (the README's "Stopping an engine"). Intake stops at once: no new
# connection, no new frame read, the broker's shared subscription left (at most 2 s).
DRAIN_ANSWER_S = 10.0  # requests in flight get their answers; later ones are abandoned (the terminal retries)
DRAIN_COMMIT_S = 5.0  # operations queued for the store commit; the rest fail, never half-applied
DRAIN_RELEASE_S = 5.0  # the broker session, connections, pools and threads close
DRAIN_TIMEOUT_S = DRAIN_ANSWER_S + DRAIN_COMMIT_S + DRAIN_RELEASE_S
# Past DRAIN_TIMEOUT_S and this grace the process exits anyway (exit status FORCED_EXIT_STATUS): whatever
# still blocks (a thread, a stalled peer) cannot keep it alive. An uncommitted transaction rolls back.
FORCED_EXIT_GRACE_S = 5.0
FORCED_EXIT_STATUS = 75


@dataclass
class RunningEngine:
    """An engine listening on TCP, on MQTT, or both; `port` is the bound TCP port (useful with port 0)."""

    engine: Engine
    tcp: TcpServer | None
    store: Store
    hsm: HsmApi
    mqtt: MqttServer | None = None
    publisher: "EventPublisher | None" = None

    @property
    def port(self) -> int:
        assert self.tcp is not None, "this engine does not listen on TCP"
        return self.tcp.port


@contextlib.asynccontextmanager
async def running_engine(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    policy: Policy | None = None,
    limits: TcpLimits | None = None,
    tcp: bool = True,
    reuse_port: bool = False,
    mqtt_limits: MqttLimits | None = None,
    events_url: str | None = None,
) -> AsyncIterator[RunningEngine]:
    """Open everything, listen, and on exit drain in-flight requests before closing the store.

    The engine answers on TCP unless `tcp` is False, and also on MQTT when `settings.mqtt_url` names a
    broker. With `reuse_port`, several engine processes can listen on one TCP port (SO_REUSEPORT) and
    the kernel spreads the connections between them. With `events_url` (the broker's events account) it
    also publishes the outbox's events after commit, as consumer `mqtt`, while no other process does.
    """
    from processor.config import open_hsm
    from processor.issuing import load_issuer_keys
    from processor.tokenization.wallet import token_bin

    if not tcp and not settings.mqtt_url:
        raise ValueError("the engine needs a transport: TCP, or MQTT with a broker URL")
    store = await Store.open(settings.db_url, pg_writers=_pg_writers())
    hsm = None
    engine: Engine | None = None
    tcp_server = None
    mqtt_server = None
    expiry_task = None
    publisher = None
    publishing = None
    try:
        hsm = await open_hsm(settings, "engine")
        keys = await load_issuer_keys(store, hsm)
        engine = Engine(store, hsm, keys, policy=policy, token_bin=await token_bin(store), reopen_hsm=_hsm_reopener(settings))
        if tcp:
            tcp_server = TcpServer(engine.handle, limits=limits)
            await tcp_server.start(host, port, reuse_port=reuse_port)
        if settings.mqtt_url:
            mqtt_server = MqttServer(engine.handle, settings.mqtt_url, limits=mqtt_limits)
            await mqtt_server.start()
        expiry_task = asyncio.create_task(_expire_holds_periodically(store))
        if events_url:
            from processor.transport.publisher import EventPublisher

            publisher = EventPublisher(store, events_url)
            # (a broker away at start is retried like one lost later: the engine answers terminals meanwhile)
            publishing = asyncio.create_task(publisher.run_as_the_one(require_first_connect=False), name="events")
        yield RunningEngine(engine, tcp_server, store, hsm, mqtt_server, publisher)
    finally:
        if publisher is not None:
            publisher.stop()
        await _drain(tcp_server, mqtt_server, expiry_task, publishing)
        if engine is not None:
            await engine.close()
            if engine.hsm is not hsm:
                await engine.hsm.close()
        if hsm is not None:
            await hsm.close()
        await store.close(timeout_s=DRAIN_COMMIT_S)


async def _drain(
    tcp: TcpServer | None, mqtt: MqttServer | None, expiry: asyncio.Task[None] | None, publishing: asyncio.Task[None] | None
) -> None:
    """Stop taking requests, give those in flight DRAIN_ANSWER_S to be answered, then close the transports.
    The event publisher (told to stop) finishes the batch in hand within the same time; what it did not
    record as published goes out again from its position, by this engine's successor or a stand-by."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    if expiry is not None:
        expiry.cancel()
        await asyncio.wait({expiry}, timeout=DRAIN_RELEASE_S)
    if tcp is not None:
        tcp.stop_accepting()
    if mqtt is not None:
        await mqtt.stop_accepting()
    pending = (tcp.in_flight() if tcp is not None else []) + (mqtt.in_flight() if mqtt is not None else [])
    if pending:
        log.info("stopping: %d request(s) in flight", len(pending))
        _, late = await asyncio.wait(pending, timeout=max(0.0, started + DRAIN_ANSWER_S - loop.time()))
        if late:
            log.warning("stopping: %d request(s) not answered within %.0f s, abandoned (their terminals retry)",
                        len(late), DRAIN_ANSWER_S)
    if publishing is not None:
        await asyncio.wait({publishing}, timeout=max(0.0, started + DRAIN_ANSWER_S - loop.time()))
        if not publishing.done():
            publishing.cancel()
            await asyncio.wait({publishing}, timeout=DRAIN_RELEASE_S)
        elif not publishing.cancelled() and publishing.exception() is not None:
            log.error("event publisher stopped: %s", publishing.exception())
    if mqtt is not None:
        await mqtt.close(timeout_s=0)
    if tcp is not None:
        await tcp.close(timeout_s=0)


def _pg_writers() -> int:
    """PROCESSOR_PG_WRITERS (1-16, default 2); a value out of range or not a number is refused in one line."""
    from processor.errors import ConfigurationError

    text = os.environ.get("PROCESSOR_PG_WRITERS", "2")
    if not text.isdigit() or not 1 <= int(text) <= 16:
        raise ConfigurationError(f"PROCESSOR_PG_WRITERS must be a number of writers from 1 to 16, not {text!r}")
    return int(text)


def _hsm_reopener(settings: Settings) -> Callable[[], Awaitable[HsmApi | None]] | None:
    """For an HSM in this process: a fresh one when its key-store file changed since it was read, else None.

    A networked HSM (`tcps://`) keeps its keys itself, and an ephemeral one has no file: neither needs it.
    """
    from processor.config import open_hsm

    if settings.hsm_url.startswith(("tcps://", "tcp://")) or settings.hsm_url in ("", "memory:"):
        return None
    path = Path(settings.hsm_url.removeprefix("file:"))

    def stamp() -> tuple[int, int] | None:
        try:
            info = path.stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    seen = stamp()

    async def reopen() -> HsmApi | None:
        nonlocal seen
        now = stamp()
        if now is None or now == seen:
            return None
        seen = now
        return await open_hsm(settings, "engine")

    return reopen


async def _expire_holds_periodically(store: StoreInterface) -> None:
    while True:
        try:
            released = await ledger.holds.expire(store, dt.datetime.now(dt.UTC))
            if released:
                log.info("released %d expired hold(s)", released)
        except Exception:
            log.exception("hold expiry pass failed")
        await asyncio.sleep(HOLD_EXPIRY_INTERVAL_S)


async def flush_logs_periodically(handler: logging.Handler) -> None:
    """Buffered log records reach their file even when traffic stops."""
    from processor.logs import FLUSH_INTERVAL_S

    while True:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        handler.flush()


async def run_server(
    settings: Settings, *, host: str, port: int, tcp: bool = True, reuse_port: bool = False, events_url: str | None = None
) -> None:
    """`processor serve`: run until SIGINT/SIGTERM, then stop accepting and drain."""
    from processor.logs import configure

    handler = configure(settings.log_file)
    flusher = asyncio.create_task(flush_logs_periodically(handler))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running_engine(settings, host=host, port=port, tcp=tcp, reuse_port=reuse_port,
                              events_url=events_url) as running:
        if running.tcp is not None:
            print(f"processor listening on {host}:{running.port}", flush=True)
        if running.mqtt is not None:
            print(f"processor answering on {running.mqtt.endpoint.safe()} ($share/{running.mqtt.group}/pos/+/request)",
                  flush=True)
        if running.publisher is not None:
            print(f"processor publishing events to {running.publisher.endpoint.safe()} (one engine at a time)", flush=True)
        await stop.wait()
        log.info("stopping: draining in-flight requests (at most %.0f s)", DRAIN_TIMEOUT_S)
        stopping_since = time.monotonic()
        _exit_if_still_running(DRAIN_TIMEOUT_S + FORCED_EXIT_GRACE_S, handler)
    log.info("stopped in %.1f s", time.monotonic() - stopping_since)
    flusher.cancel()
    handler.flush()


def _exit_if_still_running(after_s: float, handler: logging.Handler) -> None:
    """A last bound on shutdown, outside the event loop: a thread that ends the process after `after_s`."""

    def exit_now() -> None:
        log.error("still stopping %.0f s after the signal: exiting now (uncommitted work rolls back)", after_s)
        with contextlib.suppress(Exception):
            handler.flush()
        os._exit(FORCED_EXIT_STATUS)

    timer = threading.Timer(after_s, exit_now)
    timer.daemon = True  # a normal exit does not wait for it
    timer.start()
