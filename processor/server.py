"""Running the engine: wiring settings, store, HSM, engine and transports, with a clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from hsm_sim import HsmApi
from processor import ledger
from processor.auth.engine import Engine
from processor.auth.policy import Policy
from processor.config import Settings
from processor.ledger import Store, StoreInterface
from processor.transport.mqtt import MqttLimits, MqttServer
from processor.transport.tcp import TcpLimits, TcpServer

log = logging.getLogger("processor.server")
HOLD_EXPIRY_INTERVAL_S = 60.0


@dataclass
class RunningEngine:
    """An engine listening on TCP, on MQTT, or both; `port` is the bound TCP port (useful with port 0)."""

    engine: Engine
    tcp: TcpServer | None
    store: Store
    hsm: HsmApi
    mqtt: MqttServer | None = None

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
) -> AsyncIterator[RunningEngine]:
    """Open everything, listen, and on exit drain in-flight requests before closing the store.

    The engine answers on TCP unless `tcp` is False, and also on MQTT when `settings.mqtt_url` names a
    broker. With `reuse_port`, several engine processes can listen on one TCP port (SO_REUSEPORT) and
    the kernel spreads the connections between them.
    """
    from processor.config import open_hsm
    from processor.issuing import load_issuer_keys
    from processor.tokenization.wallet import token_bin

    if not tcp and not settings.mqtt_url:
        raise ValueError("the engine needs a transport: TCP, or MQTT with a broker URL")
    store = await Store.open(settings.db_url)
    hsm = None
    engine: Engine | None = None
    tcp_server = None
    mqtt_server = None
    expiry_task = None
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
        yield RunningEngine(engine, tcp_server, store, hsm, mqtt_server)
    finally:
        if expiry_task is not None:
            expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry_task
        if mqtt_server is not None:
            await mqtt_server.close()
        if tcp_server is not None:
            await tcp_server.close()
        if engine is not None:
            await engine.close()
            if engine.hsm is not hsm:
                await engine.hsm.close()
        if hsm is not None:
            await hsm.close()
        await store.close()


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


async def run_server(settings: Settings, *, host: str, port: int, tcp: bool = True, reuse_port: bool = False) -> None:
    """`processor serve`: run until SIGINT/SIGTERM, then stop accepting and drain."""
    from processor.logs import configure

    handler = configure(settings.log_file)
    flusher = asyncio.create_task(flush_logs_periodically(handler))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running_engine(settings, host=host, port=port, tcp=tcp, reuse_port=reuse_port) as running:
        if running.tcp is not None:
            print(f"processor listening on {host}:{running.port}", flush=True)
        if running.mqtt is not None:
            print(f"processor answering on {running.mqtt.endpoint.safe()} ($share/{running.mqtt.group}/pos/+/request)",
                  flush=True)
        await stop.wait()
        log.info("stopping: draining in-flight requests")
    flusher.cancel()
    handler.flush()
