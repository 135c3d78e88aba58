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
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

from processor.iso8583 import FrameDecoder, MessageFormatError, decode, encode, encode_frame

if TYPE_CHECKING:
    from terminal_sim.pos import PosTerminal

READ_CHUNK_BYTES = 65536
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


class TerminalConnection:
    """One TCP connection to the engine; `request()` sends and waits for the matching answer."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout_s: float,
        max_in_flight: int,
        terminals: "list[PosTerminal] | tuple[PosTerminal, ...]" = (),
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting: dict[tuple[str, str], deque[asyncio.Future[tuple[dict[str, Any], bytes]]]] = {}
        self.terminals: dict[str, PosTerminal] = {}
        for terminal in terminals:
            self.add_terminal(terminal)
        self._closed = False
        self._reader_task = asyncio.create_task(self._read_answers())
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
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=timeout_s)
        return cls(reader, writer, timeout_s=timeout_s, max_in_flight=max_in_flight, terminals=terminals)

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
        if self._closed:
            raise ConnectionError("connection closed")
        async with self._slots:
            future: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, deque()).append(future)
            try:
                async with asyncio.timeout(timeout_s or self.timeout_s):
                    self._writer.write(encode_frame(payload))
                    await self._writer.drain()
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

    async def _read_answers(self) -> None:
        decoder = FrameDecoder()
        error: BaseException = ConnectionError("connection closed by the engine")
        try:
            while True:
                chunk = await self._reader.read(READ_CHUNK_BYTES)
                if not chunk:
                    break
                for payload in decoder.feed(chunk):
                    try:
                        answer = decode(payload)
                    except MessageFormatError:
                        self.unmatched += 1
                        continue
                    queue = self._waiting.get(self._key(answer))
                    if not queue:
                        self.unmatched += 1
                        continue
                    future = queue.popleft()
                    if not future.done():
                        future.set_result((answer, payload))
        except (ConnectionError, OSError) as exc:
            error = exc
        except asyncio.CancelledError:
            error = ConnectionError("connection closed")
            raise
        finally:
            self._closed = True
            for queue in self._waiting.values():
                for future in queue:
                    if not future.done():
                        future.set_exception(error)

    async def close(self) -> None:
        self._closed = True
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader_task
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), timeout=1.0)

    async def __aenter__(self) -> "TerminalConnection":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
