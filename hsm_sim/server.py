"""`hsm-sim serve`: the HSM's host commands over TCP, pipelined, every resource bounded.

Commands are microseconds of CPU and never wait, so each complete frame is executed as it is cut from
the byte stream and its answer written at once; many requests can be in flight on one connection and
the client matches answers by their 4-character header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import Any

from hsm_sim import errors as st
from hsm_sim.errors import HsmError
from hsm_sim.hsm import COMMANDS, Hsm, to_jsonable
from hsm_sim.protocol import MAX_FRAME_BYTES, CommandError, ProtocolError, decode_request, encode_answer

log = logging.getLogger("hsm_sim.server")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_connections: int = 256
    max_frame_bytes: int = MAX_FRAME_BYTES
    idle_timeout_s: float = 600.0
    frame_timeout_s: float = 5.0
    write_buffer_high_bytes: int = 1024 * 1024


def run_command(hsm: Hsm, code: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(status, body) of one command: the HSM's answer, or its error status and message."""
    name = COMMANDS.get(code)
    if name is None:
        return st.UNKNOWN_COMMAND, {"error": f"unknown command code {code!r}"}
    coro = getattr(hsm, name)(*args, **kwargs)
    try:
        # An HSM command never suspends: drive the coroutine to its end without a task.
        coro.send(None)
    except StopIteration as done:
        result = done.value
    except HsmError as exc:
        return exc.code, {"error": exc.message}
    except TypeError as exc:
        return st.INVALID_INPUT, {"error": f"{name}: wrong arguments ({str(exc).split('(')[0].strip()})"}
    else:
        coro.close()
        return st.INTERNAL_ERROR, {"error": f"{name} suspended"}
    failed = result is False or (isinstance(result, tuple) and len(result) == 2 and result[0] is False)
    return (st.VERIFICATION_FAILED if failed else st.OK), {"result": to_jsonable(result)}


class _Connection(asyncio.Protocol):
    def __init__(self, server: "HsmServer") -> None:
        self.server = server
        self.limits = server.limits
        self.buffer = bytearray()
        self.transport: Any = None
        self.peer = "-"
        self.idle_timer: asyncio.TimerHandle | None = None
        self.frame_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        info = transport.get_extra_info("peername")
        self.peer = f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)
        if len(self.server.connections) >= self.limits.max_connections:
            log.warning("connection limit %d reached: refusing %s", self.limits.max_connections, self.peer)
            transport.close()
            return
        self.server.connections.add(self)
        transport.set_write_buffer_limits(high=self.limits.write_buffer_high_bytes)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for timer in (self.idle_timer, self.frame_timer):
            if timer is not None:
                timer.cancel()

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._arm_idle()
        self.buffer += data
        out = []
        while len(self.buffer) >= 2:
            length = int.from_bytes(self.buffer[:2], "big")
            if length > self.limits.max_frame_bytes:
                log.warning("%s: frame of %d bytes over the limit %d: closing", self.peer, length, self.limits.max_frame_bytes)
                self.transport.write(encode_answer("0000", "ZY", st.FRAME_ERROR, {"error": "frame too long"}))
                self.transport.close()
                return
            if len(self.buffer) < 2 + length:
                break
            payload = bytes(self.buffer[2 : 2 + length])
            del self.buffer[: 2 + length]
            out.append(self._answer(payload))
        if out:
            self.transport.write(b"".join(out))
        if self.buffer and self.frame_timer is None:
            self.frame_timer = asyncio.get_running_loop().call_later(self.limits.frame_timeout_s, self._stalled)
        elif not self.buffer and self.frame_timer is not None:
            self.frame_timer.cancel()
            self.frame_timer = None

    def _answer(self, payload: bytes) -> bytes:
        self.server.commands += 1
        try:
            command = decode_request(payload)
        except CommandError as exc:
            return encode_answer(exc.header, exc.code, exc.status, {"error": str(exc)})
        except ProtocolError as exc:
            return encode_answer("0000", "ZY", exc.status, {"error": str(exc)})
        try:
            status, body = run_command(self.server.hsm, command.code, command.args, command.kwargs)
        except Exception:
            log.exception("%s: command %s failed", self.peer, command.code)
            status, body = st.INTERNAL_ERROR, {"error": f"command {command.code} failed inside the HSM"}
        return encode_answer(command.header, command.code, status, body)

    def _arm_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = asyncio.get_running_loop().call_later(self.limits.idle_timeout_s, self._idle)

    def _idle(self) -> None:
        log.info("%s idle for %.0f s: closing", self.peer, self.limits.idle_timeout_s)
        self.transport.close()

    def _stalled(self) -> None:
        self.frame_timer = None
        log.warning("%s: incomplete frame for %.1f s: closing", self.peer, self.limits.frame_timeout_s)
        self.transport.close()


class HsmServer:
    """Serves one `Hsm` on a TCP port."""

    def __init__(self, hsm: Hsm, *, limits: ServerLimits | None = None) -> None:
        self.hsm = hsm
        self.limits = limits or ServerLimits()
        self.connections: set[_Connection] = set()
        self.commands = 0
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str = "127.0.0.1", port: int = 1500) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=512)
        log.info("HSM listening on %s:%d", host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)


async def serve(keystore: str, host: str, port: int) -> None:
    """Run until SIGINT or SIGTERM."""
    hsm = Hsm.open(keystore)
    server = HsmServer(hsm)
    await server.start(host, port)
    print(f"hsm-sim listening on {host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
        await hsm.close()
