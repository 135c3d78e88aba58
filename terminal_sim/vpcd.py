"""Serve a virtual card to pcscd through the vsmartcard ``vpcd`` reader driver.

The vpcd driver (loaded by pcscd from /etc/reader.conf.d/vpcd) listens on
127.0.0.1:35963; the card connects to it. Every message either way is a 2-byte
big-endian length and a payload. A 1-byte payload from the reader is a control code
(0 power off, 1 power on, 2 reset, 4 "send your ATR"); a longer one is a command APDU,
answered with response data followed by SW1 SW2.

The card speaks one transmission protocol, named in its ATR (`terminal_sim.emv.atr`):
T=0 by default, as most contact EMV cards, or T=1. pcscd lets an application connect only
with a protocol the ATR offers; vpcd itself passes APDUs through whatever was chosen, so
the server plays the card's side of T=0 itself (`T0Transmission`): 61xx and GET RESPONSE
for data in both directions, 6Cxx for a wrong length.
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

from terminal_sim.emv.atr import PROTOCOLS, build_atr

__all__ = ["VPCD_PORT", "ApduCard", "T0Transmission", "VpcdCardServer", "VpcdError", "card_protocol", "serve_card"]

log = logging.getLogger(__name__)

VPCD_PORT = 35963
_CTRL_OFF, _CTRL_ON, _CTRL_RESET, _CTRL_ATR = 0, 1, 2, 4
# A short APDU is at most 261 bytes; an extended one 65 544. vpcd never sends more.
_MAX_FRAME = 65535
_POLL_S = 0.2


class ApduCard(Protocol):
    """A card's application: a reset, and command APDUs answered with data and SW1 SW2."""

    def reset(self) -> None: ...

    def process_apdu(self, apdu: bytes) -> bytes: ...


_SW_WRONG_LENGTH = b"\x67\x00"
_SW_WRONG_P1P2 = b"\x6a\x86"
_SW_NOTHING_WAITING = b"\x69\x85"


class T0Transmission:
    """The card's side of T=0 (ISO/IEC 7816-3 section 10; EMV Book 1 Annex A) in front of its application.

    A T=0 exchange carries data one way only. A command that sends data and gets data back (case 4, or
    a case 3 header whose answer carries data) is answered 61xx, "xx bytes wait", and the reader fetches
    them with GET RESPONSE (00 C0 00 00 xx); the final status word comes with the last of them. A command
    that asks for a number of bytes the card does not have (case 2 with Le = 00, meaning 256, or a GET
    RESPONSE asking for more than waits) is answered 6Cxx, "ask again with Le = xx". Any other command
    forgets what was waiting.
    """

    def __init__(self, card: ApduCard) -> None:
        self.card = card
        self._waiting = b""
        self._final_sw = b""

    def reset(self) -> None:
        self._waiting = b""
        self.card.reset()

    def process_apdu(self, apdu: bytes) -> bytes:
        if len(apdu) >= 2 and apdu[0] == 0x00 and apdu[1] == 0xC0:
            return self._get_response(apdu)
        self._waiting = b""
        answer = self.card.process_apdu(apdu)
        data, sw = answer[:-2], answer[-2:]
        if not data or len(apdu) < 5:
            return answer
        if len(apdu) > 5:  # case 3 or 4: data went in, so the answer's data must wait for GET RESPONSE
            self._waiting, self._final_sw = data, sw
            return bytes([0x61, len(data) & 0xFF])
        if len(data) != (apdu[4] or 256):
            return bytes([0x6C, len(data) & 0xFF])
        return answer

    def _get_response(self, apdu: bytes) -> bytes:
        if len(apdu) != 5:
            return _SW_WRONG_LENGTH
        if apdu[2:4] != b"\x00\x00":
            return _SW_WRONG_P1P2
        if not self._waiting:
            return _SW_NOTHING_WAITING
        wanted = apdu[4] or 256
        if wanted > len(self._waiting):
            return bytes([0x6C, len(self._waiting) & 0xFF])
        chunk, self._waiting = self._waiting[:wanted], self._waiting[wanted:]
        if self._waiting:
            return chunk + bytes([0x61, min(len(self._waiting), 256) & 0xFF])
        return chunk + self._final_sw


def card_protocol(contactless: bool, requested: str | None = None) -> str:
    """The protocol to serve a card with: T=0 for contact cards unless asked otherwise; a contactless card
    speaks ISO/IEC 14443-4 (T=CL), a block protocol that PC/SC presents as T=1."""
    if requested is not None and requested not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {requested!r}")
    if contactless:
        if requested == "T=0":
            raise ValueError("a contactless card speaks T=CL, a block protocol: serve it as T=1 (or leave --protocol out)")
        return "T=1"
    return requested or "T=0"


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
        protocol: str = "T=0",
    ) -> None:
        if max_connect_attempts < 1:
            raise ValueError("max_connect_attempts must be at least 1")
        self.card = card
        self.protocol = protocol
        self.atr = build_atr(protocol)
        # T=1 carries a whole APDU and its whole answer in one exchange: the application answers as is.
        self._link: ApduCard = T0Transmission(card) if protocol == "T=0" else card
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
                    self._link.reset()
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
                        self._send(sock, self.atr)
                    elif code in (_CTRL_OFF, _CTRL_ON, _CTRL_RESET):
                        self._link.reset()
                    else:
                        log.warning("vpcd sent unknown control code %d; ignored", code)
                    continue
                self._send(sock, self._link.process_apdu(payload))
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
    protocol: str | None = None,
) -> None:
    """Load a sealed card profile and serve it to vpcd until SIGINT/SIGTERM.

    The transport key defaults to the hex in ``TERMINAL_SIM_TRANSPORT_KEY``; the protocol to
    `card_protocol`'s choice.
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
    server = VpcdCardServer(VirtualCard(profile, state_path), host, port, protocol=card_protocol(profile.contactless, protocol))

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
