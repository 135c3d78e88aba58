"""Serve a virtual card to pcscd through the vsmartcard ``vpcd`` reader driver.

The vpcd driver (loaded by pcscd from /etc/reader.conf.d/vpcd) listens on
127.0.0.1:35963; the card connects to it. Every message either way is a 2-byte
big-endian length and a payload. A 1-byte payload from the reader is a control code
(0 power off, 1 power on, 2 reset, 4 "send your ATR"); a longer one is a command APDU,
answered with response data followed by SW1 SW2.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Protocol

__all__ = ["VPCD_PORT", "ApduCard", "VpcdCardServer", "VpcdError", "serve_card"]

log = logging.getLogger(__name__)

VPCD_PORT = 35963
_CTRL_OFF, _CTRL_ON, _CTRL_RESET, _CTRL_ATR = 0, 1, 2, 4
# A short APDU is at most 261 bytes; an extended one 65 544. vpcd never sends more.
_MAX_FRAME = 65535
_POLL_S = 0.2


class ApduCard(Protocol):
    """What a card offers the reader: its ATR, a reset, and APDU processing."""

    @property
    def atr(self) -> bytes: ...

    def reset(self) -> None: ...

    def process_apdu(self, apdu: bytes) -> bytes: ...


class VpcdError(RuntimeError):
    """The card could not reach the vpcd driver within its retry budget."""


class VpcdCardServer:
    """Connects a card to the vpcd driver in a background thread and answers the reader.

    Reconnects when pcscd drops the connection (pcscd restart); gives up after
    ``max_connect_attempts`` consecutive failed connection attempts. Use as a context
    manager or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        card: ApduCard,
        host: str = "127.0.0.1",
        port: int = VPCD_PORT,
        *,
        max_connect_attempts: int = 50,
        retry_delay_s: float = 0.1,
        connect_timeout_s: float = 1.0,
    ) -> None:
        if max_connect_attempts < 1:
            raise ValueError("max_connect_attempts must be at least 1")
        self.card = card
        self.host = host
        self.port = port
        self._max_attempts = max_connect_attempts
        self._retry_delay_s = retry_delay_s
        self._connect_timeout_s = connect_timeout_s
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.error: BaseException | None = None
        self.apdus_served = 0
        self.connections = 0

    # ---- lifecycle --------------------------------------------------------

    def start(self) -> "VpcdCardServer":
        """Start serving in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("VpcdCardServer already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vpcd-card", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Disconnect from the reader (the card is removed) and join the thread."""
        self._stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError(f"vpcd card thread did not stop within {timeout_s} s")
            self._thread = None

    def request_stop(self) -> None:
        """Ask the serving loop to end (safe from a signal handler); see :meth:`stop`."""
        self._stop.set()

    def __enter__(self) -> "VpcdCardServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once connected to vpcd; False on timeout or when the server gave up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._connected.wait(min(_POLL_S, max(0.0, deadline - time.monotonic()))):
                return True
            if self.error is not None or self._thread is None or not self._thread.is_alive():
                return False
        return self._connected.is_set()

    def run_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` (or a signal) ends it."""
        self._run()
        if self.error is not None:
            raise self.error

    # ---- connection loop --------------------------------------------------

    def _connect(self) -> socket.socket | None:
        failures = 0
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout_s)
            except OSError as e:
                failures += 1
                if failures >= self._max_attempts:
                    raise VpcdError(
                        f"vpcd at {self.host}:{self.port} refused {failures} connection attempts: {e}"
                    ) from None
                self._stop.wait(self._retry_delay_s)
                continue
            sock.settimeout(_POLL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        return None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                sock = self._connect()
                if sock is None:
                    return
                self._sock = sock
                self.connections += 1
                self._connected.set()
                log.info("card connected to vpcd at %s:%d", self.host, self.port)
                try:
                    self._serve(sock)
                finally:
                    self._connected.clear()
                    self._sock = None
                    sock.close()
                if not self._stop.is_set():
                    log.info("vpcd closed the connection; reconnecting")
                    self.card.reset()
        except BaseException as e:  # surfaced through .error / run_forever
            self.error = e
            log.error("vpcd card server stopped: %s", e)

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            if self._stop.is_set():
                return None
            try:
                chunk = sock.recv(n - len(buf))
            except socket.timeout:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _send(self, sock: socket.socket, payload: bytes) -> None:
        if len(payload) > _MAX_FRAME:
            raise ValueError(f"response of {len(payload)} bytes exceeds the vpcd frame limit")
        sock.sendall(len(payload).to_bytes(2, "big") + payload)

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            header = self._recv_exact(sock, 2)
            if header is None:
                return
            size = int.from_bytes(header, "big")
            if size == 0:
                continue
            payload = self._recv_exact(sock, size)
            if payload is None:
                return
            try:
                if size == 1:
                    code = payload[0]
                    if code == _CTRL_ATR:
                        self._send(sock, self.card.atr)
                    elif code in (_CTRL_OFF, _CTRL_ON, _CTRL_RESET):
                        self.card.reset()
                    else:
                        log.warning("vpcd sent unknown control code %d; ignored", code)
                    continue
                self._send(sock, self.card.process_apdu(payload))
                self.apdus_served += 1
            except OSError:
                return


def serve_card(
    profile_path: Path,
    state_path: Path | None,
    *,
    port: int = VPCD_PORT,
    host: str = "127.0.0.1",
    transport_key: bytes | None = None,
    contactless: bool | None = None,
) -> None:
    """Load a sealed card profile and serve it to vpcd until SIGINT/SIGTERM.

    The transport key defaults to the hex in ``TERMINAL_SIM_TRANSPORT_KEY``.
    """
    from terminal_sim.emv.card import CardProfile, VirtualCard

    if transport_key is None:
        hex_key = os.environ.get("TERMINAL_SIM_TRANSPORT_KEY")
        if not hex_key:
            raise ValueError("no transport key: pass transport_key or set TERMINAL_SIM_TRANSPORT_KEY")
        transport_key = bytes.fromhex(hex_key)
    profile = CardProfile.load(Path(profile_path), transport_key)
    if contactless is not None and contactless != profile.contactless:
        profile = replace(profile, contactless=contactless)
    server = VpcdCardServer(VirtualCard(profile, state_path), host, port)

    def _on_signal(signum: int, frame: object) -> None:
        server.request_stop()

    # Signal handlers can only be installed from the main thread.
    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    log.info("serving card %r to vpcd at %s:%d", profile, host, port)
    try:
        server.run_forever()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
