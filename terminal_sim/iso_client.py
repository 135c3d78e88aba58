"""A terminal's connection to the engine: pipelined ISO 8583 requests over 2-byte-length framed TCP.

Answers are matched to requests by terminal id (DE 41) and STAN (DE 11), so many requests can be in
flight on one connection and answered in any order.

Every request of a terminal the connection knows (`terminals=`, `add_terminal`) is MACed when it is sent,
under the DUKPT key of its own KSN, and every answer's MAC is checked: an approval whose MAC does not
verify is not an approval (UnauthenticatedAnswer). A request whose DE 41 the connection does not know goes
out as it is, which is how a test plays a stranger.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from processor.iso8583 import FrameDecoder, FrameError, MessageFormatError, decode, encode, encode_frame
from terminal_sim.templates import FRAME_HEADER_BYTES, AnswerLayouts

if TYPE_CHECKING:
    from terminal_sim.pos import PosTerminal

APPROVALS = frozenset({"00", "10"})


class UnauthenticatedAnswer(ConnectionError):
    """An approval whose MAC is missing or wrong: the terminal must not act on it (it reverses instead)."""


def outgoing(terminals: "dict[str, PosTerminal]", fields: dict[str, Any]) -> "tuple[bytes, PosTerminal | None, str | None]":
    """(the bytes to send, the terminal that MACed them, their KSN): MACed when DE 41 is a known terminal."""
    terminal = terminals.get(str(fields.get("41", "")).strip())
    if terminal is None:
        return encode(fields), None, None
    payload, ksn = terminal.sign(fields)
    return payload, terminal, ksn


def checked(answer: dict[str, Any], raw: bytes, terminal: "PosTerminal | None", ksn: str | None) -> dict[str, Any]:
    """The answer, with `_authentic` set when its request was MACed; UnauthenticatedAnswer for a false approval."""
    if terminal is not None and ksn is not None:
        answer["_authentic"] = terminal.authentic(raw, ksn, answer)
        if not answer["_authentic"] and answer.get("39") in APPROVALS:
            raise UnauthenticatedAnswer(f"the approval of STAN {answer.get('11')} does not carry the engine's MAC")
    return answer


class ResponseTimeout(TimeoutError):
    """No answer within the terminal's timeout (a real terminal now reverses the request)."""


# A request sent with send_prepared(): its answer goes to `handler` (raw, spans), or (None, None) when none
# came within the connection's timeout, or the connection closed first.
AnswerHandler = Callable[[bytes | None, "dict[str, tuple[int, int]] | None"], None]


class TerminalConnection(asyncio.Protocol):
    """One TCP connection to the engine; `request()` sends and waits for the matching answer.

    One reader (data_received) takes every answer. It finds the answer's DE 41 and DE 11 from a layout kept
    per bitmap (AnswerLayouts) and hands an answer to a request sent with `send_prepared()` straight to its
    handler, without a future, a task switch or a timeout of its own: one watchdog per connection bounds
    every such wait. Any other answer is decoded in full and wakes the `request()`/`send()` waiting for it.
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        max_in_flight: int,
        terminals: "list[PosTerminal] | tuple[PosTerminal, ...]" = (),
    ) -> None:
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting: dict[tuple[str, str], deque[asyncio.Future[tuple[dict[str, Any], bytes]]]] = {}
        # send_prepared()'s requests by DE 41 and DE 11 as sent: (handler, monotonic time sent).
        self._prepared: dict[tuple[bytes, bytes], tuple[AnswerHandler, float]] = {}
        self._layouts = AnswerLayouts()
        self.terminals: dict[str, PosTerminal] = {}
        for terminal in terminals:
            self.add_terminal(terminal)
        self._transport: asyncio.Transport | None = None
        self._frames = FrameDecoder()
        self._closed = False
        self._lost: BaseException = ConnectionError("connection closed by the engine")
        self._writable: asyncio.Future[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.unmatched = 0

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout_s: float = 5.0,
        max_in_flight: int = 64,
        terminals: "list[PosTerminal] | tuple[PosTerminal, ...]" = (),
    ) -> "TerminalConnection":
        conn = cls(timeout_s=timeout_s, max_in_flight=max_in_flight, terminals=terminals)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(lambda: conn, host, port), timeout=timeout_s)
        return conn

    def add_terminal(self, terminal: "PosTerminal") -> None:
        """MAC this terminal's requests (by its DE 41) and check its answers' MACs."""
        if terminal.ipek is not None:
            self.terminals[terminal.terminal_id.strip()] = terminal

    @property
    def closed(self) -> bool:
        return self._closed

    @staticmethod
    def _key(fields: dict[str, Any]) -> tuple[str, str]:
        return (str(fields.get("41", "")).strip(), str(fields.get("11", "")))

    # ------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass asyncio's
        self._watchdog = self._loop.call_later(self._watch_interval_s, self._watch)

    def data_received(self, data: bytes) -> None:
        # Most reads hold exactly one whole answer: taken as it is, without the decoder's buffer.
        if FRAME_HEADER_BYTES < len(data) <= self._frames.max_len + FRAME_HEADER_BYTES and not self._frames.pending and int.from_bytes(data[:2], "big") == len(data) - FRAME_HEADER_BYTES:
            self._answer(data[FRAME_HEADER_BYTES:])
            return
        try:
            payloads = list(self._frames.feed(data))
        except FrameError as exc:
            assert self._transport is not None
            self._lost = ConnectionError(f"the engine sent a bad frame: {exc}")
            self._transport.abort()
            return
        for payload in payloads:
            self._answer(payload)

    def _answer(self, payload: bytes) -> None:
        if self._prepared:
            spans = self._layouts.spans(payload)
            if spans is not None:
                tid, stan = spans.get("41"), spans.get("11")
                if tid is not None and stan is not None:
                    entry = self._prepared.pop((payload[tid[0] : tid[1]], payload[stan[0] : stan[1]]), None)
                    if entry is not None:
                        entry[0](payload, spans)
                        return
        try:
            answer = decode(payload)
        except MessageFormatError:
            self.unmatched += 1
            return
        queue = self._waiting.get(self._key(answer))
        if not queue:
            self.unmatched += 1
            return
        future = queue.popleft()
        if not future.done():
            future.set_result((answer, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if exc is not None:
            self._lost = exc if isinstance(exc, ConnectionError) else ConnectionError(str(exc))
        if self._watchdog is not None:
            self._watchdog.cancel()
        for queue in self._waiting.values():
            for future in queue:
                if not future.done():
                    future.set_exception(self._lost)
        prepared, self._prepared = self._prepared, {}
        for handler, _ in prepared.values():
            handler(None, None)
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(self._lost)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    @property
    def _watch_interval_s(self) -> float:
        return min(1.0, self.timeout_s / 4)

    def _watch(self) -> None:
        # One timer for every send_prepared() request: those older than the timeout get (None, None).
        now = time.monotonic()
        expired = [key for key, (_, sent_at) in self._prepared.items() if now - sent_at >= self.timeout_s]
        for key in expired:
            handler, _ = self._prepared.pop(key)
            handler(None, None)
        if not self._closed:
            self._watchdog = self._loop.call_later(self._watch_interval_s, self._watch)

    # ------------------------------------------------------------ requests

    def send_prepared(self, framed: bytes, terminal_id: bytes, stan: bytes, handler: AnswerHandler) -> None:
        """Send a framed request whose DE 41 is `terminal_id` (as encoded) and DE 11 `stan`; `handler` gets its
        answer undecoded with its fields' spans, or (None, None) after the timeout or when the connection closes.
        ConnectionError when closed; RuntimeError past max_in_flight such requests."""
        if self._closed or self._transport is None:
            raise ConnectionError("connection closed")
        if len(self._prepared) >= self.max_in_flight:
            raise RuntimeError(f"more than {self.max_in_flight} requests in flight on one connection")
        self._prepared[(terminal_id, stan)] = (handler, time.monotonic())
        self._transport.write(framed)

    async def request(self, fields: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        """Send one request and return its decoded answer; ResponseTimeout when none comes in time."""
        if self._closed:
            raise ConnectionError("connection closed")
        payload, terminal, ksn = outgoing(self.terminals, fields)
        return await self.send(payload, self._key(fields), terminal, ksn, timeout_s=timeout_s)

    async def send(
        self,
        payload: bytes,
        key: tuple[str, str],
        terminal: "PosTerminal | None",
        ksn: str | None,
        *,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Send a message already encoded (and MACed by `terminal` under `ksn`) whose (DE 41, DE 11) is `key`;
        its decoded answer, checked as request() checks it."""
        if self._closed or self._transport is None:
            raise ConnectionError("connection closed")
        async with self._slots:
            future: asyncio.Future[tuple[dict[str, Any], bytes]] = self._loop.create_future()
            self._waiting.setdefault(key, deque()).append(future)
            try:
                async with asyncio.timeout(timeout_s or self.timeout_s):
                    self._transport.write(encode_frame(payload))
                    if self._writable is not None and not self._writable.done():
                        await self._writable
                    answer, raw = await future
            except TimeoutError:
                raise ResponseTimeout(f"no answer to STAN {key[1]} within {timeout_s or self.timeout_s:g} s") from None
            finally:
                queue = self._waiting.get(key)
                if queue is not None:
                    # Answered futures were taken off the queue by the reader. deque.remove of one no longer
                    # there would raise a ValueError whose message formats the future's repr (its whole
                    # answer): a cost on every answer, so only a future still queued is removed.
                    if future in queue:
                        queue.remove(future)
                    if not queue:
                        self._waiting.pop(key, None)
        return checked(answer, raw, terminal, ksn)

    async def close(self) -> None:
        if not self._closed:
            self._lost = ConnectionError("connection closed")
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        # Anything still waiting hears of the close now, not at its timeout.
        self.connection_lost(None)

    async def __aenter__(self) -> "TerminalConnection":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
