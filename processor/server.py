"""Running the engine: wiring settings, store, HSM, engine and transports, with a clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from processor import ledger
from processor.auth.engine import Engine
from processor.auth.policy import Policy
from processor.config import Settings
from processor.hsm import HsmInterface
from processor.ledger import Store, StoreInterface
from processor.transport.tcp import TcpLimits, TcpServer

log = logging.getLogger("processor.server")
HOLD_EXPIRY_INTERVAL_S = 60.0


@dataclass
class RunningEngine:
    """An engine listening on TCP; `port` is the bound port (useful with port 0)."""

    engine: Engine
    tcp: TcpServer
    store: Store
    hsm: HsmInterface

    @property
    def port(self) -> int:
        return self.tcp.port


@contextlib.asynccontextmanager
async def running_engine(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    policy: Policy | None = None,
    limits: TcpLimits | None = None,
) -> AsyncIterator[RunningEngine]:
    """Open everything, listen, and on exit drain in-flight requests before closing the store."""
    from hsm_sim import connect
    from processor.issuing import load_issuer_keys
    from processor.tokenization.wallet import token_bin

    store = await Store.open(settings.db_url)
    hsm = None
    tcp = None
    expiry_task = None
    try:
        hsm = await connect(settings.hsm_url)
        keys = await load_issuer_keys(store, hsm)
        engine = Engine(store, hsm, keys, policy=policy, token_bin=await token_bin(store))
        tcp = TcpServer(engine.handle, limits=limits)
        await tcp.start(host, port)
        expiry_task = asyncio.create_task(_expire_holds_periodically(store))
        yield RunningEngine(engine, tcp, store, hsm)
    finally:
        if expiry_task is not None:
            expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry_task
        if tcp is not None:
            await tcp.close()
        if hsm is not None:
            await hsm.close()
        await store.close()


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


async def run_server(settings: Settings, *, host: str, port: int) -> None:
    """`processor serve`: run until SIGINT/SIGTERM, then stop accepting and drain."""
    from processor.logs import configure

    handler = configure(settings.log_file)
    flusher = asyncio.create_task(flush_logs_periodically(handler))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running_engine(settings, host=host, port=port) as running:
        print(f"processor listening on {host}:{running.port}", flush=True)
        await stop.wait()
        log.info("stopping: draining in-flight requests")
    flusher.cancel()
    handler.flush()
