"""ISO 8583 over TCP: 2-byte length framing, pipelined requests, every resource bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from processor.iso8583 import FrameTimeout, FrameTooLarge, IncompleteFrame, encode_frame, read_frame

log = logging.getLogger("processor.transport.tcp")

Handler = Callable[[bytes], Awaitable[bytes | None]]


@dataclass(frozen=True, slots=True)
class TcpLimits:
    """Bounds of the TCP server; the defaults suit a few hundred terminals per engine process."""

    max_frame_bytes: int = 8192
    max_connections: int = 512
    max_in_flight_per_connection: int = 64
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 5.0
    handler_timeout_s: float = 10.0
    write_buffer_high_bytes: int = 256 * 1024


class TcpServer:
    """Accepts terminal connections and hands each framed request to the engine.

    Requests on one connection are processed concurrently (up to a bound) and each answer is written as
    soon as it is ready, so a slow authorization never holds back the ones behind it; terminals match
    answers by DE 11/37/41.
    """

    def __init__(self, handler: Handler, *, limits: TcpLimits | None = None) -> None:
        self.handler = handler
        self.limits = limits or TcpLimits()
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.stats = {"connections": 0, "refused": 0, "frames": 0, "answers": 0, "bad_frames": 0}

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str = "127.0.0.1", port: int = 8583) -> None:
        self._server = await asyncio.start_server(self._accept, host, port, backlog=1024, limit=self.limits.max_frame_bytes + 2)
        log.info("listening on %s:%d", host, self.port)

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then drop the connections."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.limits.handler_timeout_s)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.limits.max_connections:
            self.stats["refused"] += 1
            log.warning("connection limit %d reached: refusing %s", self.limits.max_connections, _peer(writer))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats["connections"] += 1
        writer.transport.set_write_buffer_limits(high=self.limits.write_buffer_high_bytes)
        try:
            await self._serve_connection(reader, writer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        in_flight = asyncio.Semaphore(self.limits.max_in_flight_per_connection)
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    payload = await asyncio.wait_for(
                        read_frame(reader, max_len=self.limits.max_frame_bytes, timeout_s=self.limits.frame_timeout_s),
                        timeout=self.limits.idle_timeout_s,
                    )
                except TimeoutError:
                    log.info("%s idle for %.0f s: closing", peer, self.limits.idle_timeout_s)
                    return
                except FrameTooLarge as exc:
                    self.stats["bad_frames"] += 1
                    log.warning("%s sent a frame header of %s bytes (limit %d): closing", peer, exc, self.limits.max_frame_bytes)
                    return
                except (FrameTimeout, IncompleteFrame) as exc:
                    self.stats["bad_frames"] += 1
                    log.warning("%s sent an incomplete frame (%s): closing", peer, exc)
                    return
                except (ConnectionError, asyncio.IncompleteReadError):
                    return
                if payload is None:
                    return
                self.stats["frames"] += 1
                await in_flight.acquire()
                task = asyncio.create_task(self._answer(payload, writer, in_flight, peer))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            if pending:
                await asyncio.wait(pending, timeout=self.limits.handler_timeout_s)

    async def _answer(
        self, payload: bytes, writer: asyncio.StreamWriter, in_flight: asyncio.Semaphore, peer: str
    ) -> None:
        try:
            answer = await asyncio.wait_for(self.handler(payload), timeout=self.limits.handler_timeout_s)
            if answer is None or writer.is_closing():
                return
            writer.write(encode_frame(answer))
            self.stats["answers"] += 1
            await asyncio.wait_for(writer.drain(), timeout=self.limits.handler_timeout_s)
        except TimeoutError:
            log.error("%s: request not answered within %.1f s", peer, self.limits.handler_timeout_s)
        except ConnectionError:
            log.info("%s went away before its answer was written", peer)
        except Exception:
            log.exception("%s: request failed", peer)
        finally:
            in_flight.release()


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    return f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)
