"""2-byte big-endian length framing, with a bound on the frame and a timeout on every read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

HEADER_BYTES = 2
MAX_FRAME_BYTES = 8192


class FrameError(Exception):
    """The byte stream does not carry a well-formed frame."""


class FrameTooLarge(FrameError):
    """The length header announces more than the receiver accepts."""

    def __init__(self, length: int, limit: int = MAX_FRAME_BYTES) -> None:
        super().__init__(f"{length} (limit {limit})")
        self.length = length
        self.limit = limit


class FrameTimeout(FrameError):
    """The peer started a frame and did not finish it in time."""


class IncompleteFrame(FrameError):
    """The connection ended in the middle of a frame."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"expected {expected} bytes, got {got}")
        self.expected = expected
        self.got = got


def encode_frame(payload: bytes) -> bytes:
    """Length header + payload."""
    if len(payload) > 0xFFFF:
        raise FrameTooLarge(len(payload), 0xFFFF)
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


async def read_frame(reader: asyncio.StreamReader, *, max_len: int = MAX_FRAME_BYTES, timeout_s: float) -> bytes | None:
    """The next payload; None on a clean end of stream between frames.

    Waiting for the first header byte is not bounded here (the caller bounds idleness); once a frame has
    started, the rest must arrive within `timeout_s`.
    """
    first = await reader.read(1)
    if not first:
        return None
    try:
        rest = await asyncio.wait_for(reader.readexactly(1), timeout=timeout_s)
        length = int.from_bytes(first + rest, "big")
        if length > max_len:
            raise FrameTooLarge(length, max_len)
        if length == 0:
            return b""
        return await asyncio.wait_for(reader.readexactly(length), timeout=timeout_s)
    except TimeoutError:
        raise FrameTimeout(f"frame not complete within {timeout_s:g} s") from None
    except asyncio.IncompleteReadError as exc:
        raise IncompleteFrame(exc.expected or 0, len(exc.partial)) from None


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, iterate complete payloads. The buffer is bounded."""

    def __init__(self, max_len: int = MAX_FRAME_BYTES) -> None:
        self.max_len = max_len
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        while len(self._buffer) >= HEADER_BYTES:
            length = int.from_bytes(self._buffer[:HEADER_BYTES], "big")
            if length > self.max_len:
                raise FrameTooLarge(length, self.max_len)
            end = HEADER_BYTES + length
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[HEADER_BYTES:end])
            del self._buffer[:end]
            yield payload

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)
