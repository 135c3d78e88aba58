"""`hsm-sim serve`: the HSM's host commands over mutually authenticated TLS, pipelined, every resource bounded.

Each connection is TLS 1.3 (kept in memory BIOs, so the handshake and its failures are ours to see and
audit). A client whose certificate does not verify never completes the handshake; one without a
certificate, or whose certificate was revoked or names no role, gets a refusal as the answer to its
first command and the connection is closed. Every command then runs as the certificate's identity,
and the HSM checks that identity's role before anything else (see access.py).

Commands are microseconds of CPU and never wait, so each complete frame is executed as it is cut from
the byte stream and its answer written at once; many requests can be in flight on one connection and
the client matches answers by their 4-character header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from dataclasses import dataclass
from typing import Any

from hsm_sim import errors as st
from hsm_sim.access import CALLER, Identity, check_role
from hsm_sim.errors import HsmError
from hsm_sim.framing import FrameDecoder, FrameTooLarge, StreamLimits
from hsm_sim.hsm import COMMANDS, Hsm, to_jsonable, verification_failed
from hsm_sim.pki import ServerTls, identity_of
from hsm_sim.protocol import MAX_FRAME_BYTES, CommandError, ProtocolError, decode_request, encode_answer

log = logging.getLogger("hsm_sim.server")

TLS_READ_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ServerLimits(StreamLimits):
    """Bounds of `hsm-sim serve`: the framed-stream ones, and the time a client has to finish its TLS handshake."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    idle_timeout_s: float = 600.0
    write_buffer_high_bytes: int = 1024 * 1024
    handshake_timeout_s: float = 5.0


def run_command(hsm: Hsm, identity: Identity, code: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(status, body) of one command run as `identity`: the HSM's answer, or its error status and message."""
    name = COMMANDS.get(code)
    if name is None:
        return st.UNKNOWN_COMMAND, {"error": f"unknown command code {code!r}"}
    token = CALLER.set(identity)
    try:
        coro = getattr(hsm, name)(*args, **kwargs)
        try:
            # An HSM command never suspends: drive the coroutine to its end without a task.
            coro.send(None)
        except StopIteration as done:
            result = done.value
        except HsmError as exc:
            return exc.code, {"error": exc.message}
        else:
            coro.close()
            return st.INTERNAL_ERROR, {"error": f"{name} suspended"}
    except TypeError as exc:
        return st.INVALID_INPUT, {"error": f"{name}: wrong arguments ({str(exc).split('(')[0].strip()})"}
    finally:
        CALLER.reset(token)
    return (st.VERIFICATION_FAILED if verification_failed(result) else st.OK), {"result": to_jsonable(result)}


class _Connection(asyncio.Protocol):
    def __init__(self, server: "HsmServer") -> None:
        self.server = server
        self.limits = server.limits
        self.decoder = FrameDecoder(self.limits.max_frame_bytes)
        self.transport: Any = None
        self.peer = "-"
        self.tls: ssl.SSLObject | None = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.identity: Identity | None = None  # set once the client is known
        self.refusal: str | None = None  # why this connection gets nothing but a refusal
        self.closed = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.frame_timer: asyncio.TimerHandle | None = None
        self.handshake_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        info = transport.get_extra_info("peername")
        self.peer = f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)
        if len(self.server.connections) >= self.limits.max_connections:
            log.warning("connection limit %d reached: refusing %s", self.limits.max_connections, self.peer)
            self.closed = True
            transport.close()
            return
        self.server.connections.add(self)
        transport.set_write_buffer_limits(high=self.limits.write_buffer_high_bytes)
        self._arm_idle()
        if self.server.tls is None:
            self._admit(self.server.unauthenticated)
            return
        self.tls = self.server.tls.context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshake_timer = asyncio.get_running_loop().call_later(self.limits.handshake_timeout_s, self._handshake_stalled)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.close()

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._arm_idle()
        if self.tls is None:
            self._frames(data)
            return
        self.incoming.write(data)
        if self.handshake_timer is not None and not self._handshake():
            return
        plain = self._read_tls()
        if plain:
            self._frames(plain)

    # ------------------------------------------------------------ TLS

    def _handshake(self) -> bool:
        """Advance the handshake; True once it is complete and the client is admitted or to be refused."""
        assert self.tls is not None
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return False
        except (ssl.SSLError, OSError) as exc:
            self._flush_tls()  # the alert tells the client why
            self.server.hsm.audit.refusal("-", "-", "connect", _tls_reason(exc), peer=self.peer)
            log.warning("%s: TLS handshake refused: %s", self.peer, _tls_reason(exc))
            self.close()
            return False
        self._flush_tls()
        assert self.handshake_timer is not None
        self.handshake_timer.cancel()
        self.handshake_timer = None
        try:
            identity = identity_of(self.tls.getpeercert())
        except ValueError as exc:
            self._refuse(None, str(exc))
            return True
        self._admit(identity)
        return True

    def _read_tls(self) -> bytes:
        assert self.tls is not None
        chunks = []
        while True:
            try:
                chunk = self.tls.read(TLS_READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.close()
                break
            except ssl.SSLError as exc:
                log.warning("%s: TLS error: %s", self.peer, _tls_reason(exc))
                self.close()
                break
            if not chunk:
                break
            chunks.append(chunk)
        self._flush_tls()
        return b"".join(chunks)

    def _flush_tls(self) -> None:
        out = self.outgoing.read()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    def _write(self, data: bytes) -> None:
        if self.tls is None:
            self.transport.write(data)
            return
        self.tls.write(data)
        self._flush_tls()

    # ------------------------------------------------------------ who the client is

    def _admit(self, identity: Identity | None) -> None:
        if identity is None:
            self._refuse(None, "no client certificate")
        elif identity.serial and self.server.tls is not None and self.server.tls.revocations.revoked(identity.serial):
            self._refuse(identity, f"certificate {identity.serial} was revoked")
        else:
            self.identity = identity

    def _refuse(self, identity: Identity | None, why: str) -> None:
        """The client gets one answer, the refusal, to its first command; a silent one is closed after the frame timeout."""
        self.identity, self.refusal = identity, why
        self.frame_timer = asyncio.get_running_loop().call_later(self.limits.frame_timeout_s, self._silent_refused)

    def _silent_refused(self) -> None:
        who = self.identity.name if self.identity else "anonymous"
        self.server.hsm.audit.refusal(who, self.identity.role if self.identity else "-", "connect", self.refusal or "", peer=self.peer)
        self.close()

    # ------------------------------------------------------------ frames

    def _frames(self, data: bytes) -> None:
        out = []
        try:
            for payload in self.decoder.feed(data):
                out.append(self._answer(payload))
                if self.closed:  # refused: nothing more is read
                    break
        except FrameTooLarge as exc:
            log.warning("%s: %s: closing", self.peer, exc)
            out.append(encode_answer("0000", "ZY", st.FRAME_ERROR, {"error": f"request {exc}"}))
            self.closed = True
        if out:
            self._write(b"".join(out))
        if self.closed:
            self.close()
            return
        if self.refusal is not None:
            return
        if self.decoder.pending and self.frame_timer is None:
            self.frame_timer = asyncio.get_running_loop().call_later(self.limits.frame_timeout_s, self._stalled)
        elif not self.decoder.pending and self.frame_timer is not None:
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
        identity = self.identity
        if identity is not None and self.refusal is None and identity.serial and self.server.tls is not None:
            if self.server.tls.revocations.revoked(identity.serial):
                self.refusal = f"certificate {identity.serial} was revoked"
        if self.refusal is not None or identity is None:
            why = self.refusal or "no client identity"
            who, role = (identity.name, identity.role) if identity else ("anonymous", "-")
            self.server.hsm.audit.refusal(who, role, COMMANDS.get(command.code, command.code), why, peer=self.peer)
            self.closed = True
            return encode_answer(command.header, command.code, st.NOT_PERMITTED, {"error": f"refused: {why}"})
        try:
            status, body = run_command(self.server.hsm, identity, command.code, command.args, command.kwargs)
        except Exception:
            log.exception("%s: command %s failed", self.peer, command.code)
            status, body = st.INTERNAL_ERROR, {"error": f"command {command.code} failed inside the HSM"}
        try:
            return encode_answer(command.header, command.code, status, body, self.limits.max_frame_bytes)
        except FrameTooLarge as exc:
            log.warning("%s: answer to %s is %s", self.peer, command.code, exc)
            why = f"the answer would be a {exc}; ask for less (list_keys takes offset and limit)"
            return encode_answer(command.header, command.code, st.FRAME_ERROR, {"error": why})

    # ------------------------------------------------------------ timers

    def _arm_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = asyncio.get_running_loop().call_later(self.limits.idle_timeout_s, self._idle)

    def _idle(self) -> None:
        log.info("%s idle for %.0f s: closing", self.peer, self.limits.idle_timeout_s)
        self.close()

    def _stalled(self) -> None:
        self.frame_timer = None
        log.warning("%s: incomplete frame for %.1f s: closing", self.peer, self.limits.frame_timeout_s)
        self.close()

    def _handshake_stalled(self) -> None:
        self.handshake_timer = None
        self.server.hsm.audit.refusal("-", "-", "connect", f"no TLS handshake within {self.limits.handshake_timeout_s:g} s", peer=self.peer)
        self.close()

    def close(self) -> None:
        self.closed = True
        for timer in (self.idle_timer, self.frame_timer, self.handshake_timer):
            if timer is not None:
                timer.cancel()
        if self.transport is not None:
            self.transport.close()


def _tls_reason(exc: BaseException) -> str:
    """OpenSSL's reason without the source location: 'certificate has expired', 'wrong version number'."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate refused: {exc.verify_message}"
    reason = getattr(exc, "reason", None)
    return str(reason).replace("_", " ").lower() if reason else exc.__class__.__name__


class HsmServer:
    """Serves one `Hsm` on a TCP port, to the clients `tls` authenticates.

    Without `tls` no client is authenticated: every command is refused, unless `unauthenticated_role`
    names the role to grant anyone who connects (the benchmark's unauthenticated baseline on loopback).
    """

    def __init__(
        self, hsm: Hsm, *, tls: ServerTls | None, limits: ServerLimits | None = None, unauthenticated_role: str | None = None
    ) -> None:
        self.hsm = hsm
        self.tls = tls
        self.limits = limits or ServerLimits()
        self.unauthenticated = Identity("unauthenticated", check_role(unauthenticated_role)) if unauthenticated_role else None
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
        log.info("HSM listening on %s:%d (%s)", host, self.port, "mutual TLS" if self.tls else "no authentication")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)


async def serve(hsm: Hsm, tls: ServerTls, host: str, port: int) -> None:
    """Run until SIGINT or SIGTERM."""
    server = HsmServer(hsm, tls=tls)
    await server.start(host, port)
    print(f"hsm-sim listening on {host}:{server.port} (mutual TLS)", flush=True)
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
