"""ISO 8583 over TCP: 2-byte length framing, pipelined requests, every resource bounded.

The server is an asyncio Protocol: bytes are cut into frames as they arrive, each frame becomes one
task, and its answer is written the moment it is ready. One watchdog per server, ticking a few times a
second, enforces the idle, authentication and per-request deadlines: a request costs no timer of its own, only the loop
time it started at.

Idle sockets cannot lock terminals out: a connection must authenticate (send a message whose MAC verifies)
within `unauthenticated_timeout_s`; one address holds at most `max_connections_per_peer`; and when a limit
is reached, the idle connection that least deserves its place (one that never authenticated first, then
the longest idle) is closed to make room. Only when every connection has a request in flight is a new
one refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from hsm_sim.framing import FrameDecoder, FrameTooLarge, StreamLimits, encode_frame

log = logging.getLogger("processor.transport.tcp")

# handler(payload, session=connection): the engine marks the session authenticated once one of its
# messages carried a MAC that verified (`Session.authenticated`).
Handler = Callable[..., Awaitable[bytes | None]]


class Session(Protocol):
    """What the engine may tell the transport about a connection."""

    authenticated: bool


@dataclass(frozen=True, slots=True)
class TcpLimits(StreamLimits):
    """Bounds of the TCP server (the framed-stream ones and its own); the defaults suit a few hundred
    terminals per engine process."""

    max_connections: int = 512
    max_connections_per_peer: int = 128
    max_in_flight_per_connection: int = 64
    unauthenticated_timeout_s: float = 10.0
    handler_timeout_s: float = 10.0


class _Connection(asyncio.Protocol):
    """One terminal connection."""

    def __init__(self, server: "TcpServer") -> None:
        self.server = server
        self.limits = server.limits
        self.decoder = FrameDecoder(self.limits.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self.tasks: dict[asyncio.Task[None], float] = {}  # in flight, with the loop time each started at
        self.timed_out: set[asyncio.Task[None]] = set()
        self.last_active = 0.0
        self.opened = 0.0
        self.frame_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.host = "-"
        self.authenticated = False  # set by the engine once a message of this connection authenticated

    # ------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        info = transport.get_extra_info("peername")
        self.peer = f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)
        self.host = str(info[0]) if isinstance(info, tuple) else str(info)
        self.opened = self.last_active = asyncio.get_running_loop().time()
        server, limits = self.server, self.limits
        if server.stopping:
            self._refuse("the engine is stopping")
            return
        same_peer = server.peers.get(self.host, set())
        if len(same_peer) >= limits.max_connections_per_peer and not server.evict(
            same_peer, f"{self.host} holds {len(same_peer)} connections (limit {limits.max_connections_per_peer})"
        ):
            self._refuse(f"{self.host} already holds {len(same_peer)} busy connections")
            return
        if len(server.connections) >= limits.max_connections and not server.evict(
            server.connections, f"connection limit {limits.max_connections} reached"
        ):
            self._refuse(f"connection limit {limits.max_connections} reached and every connection is busy")
            return
        server.connections.add(self)
        server.peers.setdefault(self.host, set()).add(self)
        server.stats["connections"] += 1
        transport.set_write_buffer_limits(high=limits.write_buffer_high_bytes)

    def _refuse(self, why: str) -> None:
        self.server.stats["refused"] += 1
        log.warning("refusing %s: %s", self.peer, why)
        self.closed = True
        assert self.transport is not None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.server.stopping:
            return  # (stopping: a request not read is one the terminal sends again elsewhere, never half-done)
        self.last_active = asyncio.get_running_loop().time()
        try:
            frames = list(self.decoder.feed(data))
        except FrameTooLarge as exc:
            self.server.stats["bad_frames"] += 1
            log.warning("%s sent a frame header of %d bytes (limit %d): closing", self.peer, exc.length, exc.limit)
            self.close()
            return
        for payload in frames:
            self._dispatch(payload)
        if self.decoder.pending:
            if self.frame_timer is None:
                loop = asyncio.get_running_loop()
                self.frame_timer = loop.call_later(self.limits.frame_timeout_s, self._frame_stalled)
        elif self.frame_timer is not None:
            self.frame_timer.cancel()
            self.frame_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._forget()

    def _forget(self) -> None:
        """Give this connection's places back (at once, even before the socket has finished closing)."""
        self.server.connections.discard(self)
        same_peer = self.server.peers.get(self.host)
        if same_peer is not None:
            same_peer.discard(self)
            if not same_peer:
                del self.server.peers[self.host]
        if self.frame_timer is not None:
            self.frame_timer.cancel()

    def pause_writing(self) -> None:
        # The terminal does not read its answers: stop reading its requests until it catches up.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed and not self.server.stopping:
            self.transport.resume_reading()

    # ------------------------------------------------------------ requests

    def _dispatch(self, payload: bytes) -> None:
        self.server.stats["frames"] += 1
        if len(self.tasks) >= self.limits.max_in_flight_per_connection:
            # Reading pauses until answers go out; the frame already received is still served.
            assert self.transport is not None
            self.transport.pause_reading()
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._answer(payload))
        self.tasks[task] = loop.time()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)
        self.timed_out.discard(task)
        if (
            not self.closed
            and not self.server.stopping
            and self.transport is not None
            and len(self.tasks) < self.limits.max_in_flight_per_connection
        ):
            self.transport.resume_reading()

    async def _answer(self, payload: bytes) -> None:
        try:
            answer = await self.server.handler(payload, session=self)
        except asyncio.CancelledError:
            if asyncio.current_task() not in self.timed_out:
                raise
            log.error("%s: request not answered within %.1f s", self.peer, self.limits.handler_timeout_s)
            return
        except Exception:
            log.exception("%s: request failed", self.peer)
            return
        if answer is None:
            # The engine could not read far enough to answer: a terminal left waiting on an open socket
            # would hang, so the connection ends here.
            self.server.stats["bad_frames"] += 1
            log.warning("%s sent a frame that cannot be answered: closing", self.peer)
            self.close()
            return
        if self.closed or self.transport is None or self.transport.is_closing():
            log.info("%s went away before its answer was written", self.peer)
            return
        self.transport.write(encode_frame(answer))
        self.server.stats["answers"] += 1

    # ------------------------------------------------------------ timers

    def watch(self, now: float) -> None:
        """The watchdog's visit: cancel requests past their deadline, close the connection when idle."""
        deadline = now - self.limits.handler_timeout_s
        for task, started in list(self.tasks.items()):
            if started <= deadline and task not in self.timed_out and not task.done():
                self.timed_out.add(task)
                task.cancel()
        if not self.tasks and now - self.last_active >= self.limits.idle_timeout_s:
            log.info("%s idle for %.0f s: closing", self.peer, self.limits.idle_timeout_s)
            self.close()
        elif not self.authenticated and not self.tasks and now - self.opened >= self.limits.unauthenticated_timeout_s:
            # Its first requests, if any, were answered: none of them authenticated.
            self.server.stats["unauthenticated"] += 1
            log.warning(
                "%s sent no authenticated message within %.1f s: closing", self.peer, self.limits.unauthenticated_timeout_s
            )
            self.close()

    def _frame_stalled(self) -> None:
        self.frame_timer = None
        self.server.stats["bad_frames"] += 1
        log.warning(
            "%s sent an incomplete frame (%d bytes, nothing more for %.1f s): closing",
            self.peer,
            self.decoder.pending,
            self.limits.frame_timeout_s,
        )
        self.close()

    def close(self) -> None:
        self.closed = True
        self._forget()
        if self.transport is not None:
            self.transport.close()


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
        self._watchdog: asyncio.TimerHandle | None = None
        self.connections: set[_Connection] = set()
        self.peers: dict[str, set[_Connection]] = {}
        self.stopping = False
        self.stats = {
            "connections": 0, "refused": 0, "evicted": 0, "unauthenticated": 0, "frames": 0, "answers": 0, "bad_frames": 0,
        }

    def evict(self, candidates: set[_Connection], why: str) -> bool:
        """Close the idle connection among `candidates` that least deserves its place; False when all are busy.

        Unauthenticated connections go first, then the one idle the longest: a flood of idle sockets makes
        room for the terminal that comes next instead of locking it out.
        """
        idle = [c for c in candidates if not c.tasks and not c.closed]
        if not idle:
            return False
        victim = min(idle, key=lambda c: (c.authenticated, c.last_active))
        self.stats["evicted"] += 1
        log.warning("%s: closing idle %s%s to make room", why, "" if victim.authenticated else "unauthenticated ", victim.peer)
        victim.close()
        return True

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str = "127.0.0.1", port: int = 8583, *, reuse_port: bool = False) -> None:
        """Listen; with `reuse_port` other processes may listen on the same port (SO_REUSEPORT)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024, reuse_port=reuse_port or None
        )
        log.info("listening on %s:%d", host, self.port)
        self._watch()

    @property
    def watch_interval_s(self) -> float:
        """How often the watchdog looks: a quarter of the shortest deadline, at most a second."""
        limits = self.limits
        return min(1.0, limits.handler_timeout_s / 4, limits.idle_timeout_s / 4, limits.unauthenticated_timeout_s / 4)

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):
            conn.watch(now)
        self._watchdog = loop.call_later(self.watch_interval_s, self._watch)

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    def stop_accepting(self) -> None:
        """Shutdown, first step: no new connection and no new request; those in flight go on.

        Reading stops on every connection, so the set of requests in flight can only shrink: a drain that
        waits for them ends. A request the terminal sent but the engine did not read was never started; the
        terminal sends it again (to another engine, or after the restart) and its idempotency key gives it
        its one answer.
        """
        if self.stopping:
            return
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None and not conn.closed:
                conn.transport.pause_reading()

    def in_flight(self) -> list[asyncio.Task[None]]:
        return [t for c in self.connections for t in c.tasks if not t.done()]

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (within `timeout_s`, by default the handler
        timeout), then drop the connections."""
        self.stop_accepting()
        if self._watchdog is not None:
            self._watchdog.cancel()
        pending = self.in_flight()
        if pending:
            wait_s = self.limits.handler_timeout_s if timeout_s is None else timeout_s
            _, late = await asyncio.wait(pending, timeout=max(wait_s, 0.0))
            for task in late:
                task.cancel()  # its answer would go to a connection closed below
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)
