"""Serving the API with uvicorn: `processor api --http HOST:PORT`, or in-process for tests and the load command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from processor.api.service import ApiService, open_service
from processor.config import Settings

log = logging.getLogger("processor.api")

MAX_CONNECTIONS = 1000
KEEP_ALIVE_S = 30
SHUTDOWN_GRACE_S = 3
STARTUP_TIMEOUT_S = 30


class _CoalescedWrites:
    """A connection's transport whose writes within one turn of the event loop leave in one send().

    uvicorn writes a response's head and its body separately: two system calls (and two loopback segments for
    the client to read) where one does. The buffered bytes go out at the next turn of the loop, before any
    further read of this connection is handled, and before the connection closes.
    """

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each response in one system call."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: whoever embeds it decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningApi:
    service: ApiService
    server: uvicorn.Server
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def running_api(settings: Settings, *, host: str = "127.0.0.1", port: int = 0, poll_interval_s: float = 0.02) -> AsyncIterator[RunningApi]:
    """Open the service, serve it on HOST:PORT (0: a free port), and stop cleanly on exit."""
    from processor.api.app import create_app
    from processor.api.fastpath import PaymentsFastPath

    async with open_service(settings, poll_interval_s=poll_interval_s) as service:
        config = uvicorn.Config(
            PaymentsFastPath(create_app(service), service), host=host, port=port, http=_HttpProtocol, lifespan="off", access_log=False,
            log_level="warning", limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S, server_header=False,
        )
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(), name="uvicorn")
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                while not server.started:
                    if task.done():
                        task.result()
                        raise RuntimeError("the API server stopped while starting")
                    await asyncio.sleep(0.01)
            bound = server.servers[0].sockets[0].getsockname()[1]
            yield RunningApi(service, server, host, bound)
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, SHUTDOWN_GRACE_S + 5)


async def run_api(settings: Settings, *, host: str, port: int) -> None:
    """`processor api`: serve until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running_api(settings, host=host, port=port) as running:
        print(f"money app API listening on {running.url} (OpenAPI at {running.url}/openapi.json)", flush=True)
        await stop.wait()
        log.info("stopping the API")


def run_until_done(coro: Any) -> Any:
    """Run a coroutine on uvloop (asyncio's own loop when uvloop is missing)."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def parse_http(text: str, default_port: int = 8080) -> tuple[str, int]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); refuses what is not HOST:PORT."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        from processor.errors import InvalidRequest

        raise InvalidRequest(f"--http takes HOST:PORT such as 127.0.0.1:8080, got {text!r}")
    return host or "127.0.0.1", int(port or default_port)


__all__ = ["RunningApi", "parse_http", "run_api", "running_api"]
