"""Length-prefixed framing with bounds: the one copy used by `hsm-sim serve`, its client, and the
processor's ISO 8583 link.

A frame is a 2-byte big-endian length followed by that many bytes. The receiver refuses a length over
its limit (FrameTooLarge) before reading the body, and a frame once started must be complete within a
timeout (FrameTimeout), so neither a large nor a slow peer can hold memory or a connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

LENGTH_BYTES = 2
MAX_PAYLOAD_BYTES = 0xFFFF  # what two length bytes can say
MAX_FRAME_BYTES = 8192


class FrameError(Exception):
    """The byte stream does not carry a well-formed frame."""


class FrameTooLarge(FrameError):
    """A frame longer than the receiver (or the sender's limit) accepts."""

    def __init__(self, length: int, limit: int = MAX_FRAME_BYTES) -> None:
        super().__init__(f"frame of {length} bytes, the limit is {limit}")
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


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """The bounds every framed-stream server keeps; each server sets its own defaults and adds its own."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_connections: int = 256
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 5.0  # from a frame's first byte to its last
    write_buffer_high_bytes: int = 256 * 1024  # a peer that does not read its answers stops being read


def encode_frame(payload: bytes, max_len: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Length header + payload; FrameTooLarge when the payload is over `max_len`."""
    if len(payload) > max_len:
        raise FrameTooLarge(len(payload), max_len)
    return len(payload).to_bytes(LENGTH_BYTES, "big") + payload


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
    """Incremental decoder: feed bytes as they arrive, iterate complete payloads. The buffer is bounded:
    a header announcing more than `max_len` raises FrameTooLarge after the frames before it."""

    __slots__ = ("max_len", "_buffer")

    def __init__(self, max_len: int = MAX_FRAME_BYTES) -> None:
        self.max_len = max_len
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= LENGTH_BYTES:
            length = int.from_bytes(buffer[:LENGTH_BYTES], "big")
            if length > self.max_len:
                raise FrameTooLarge(length, self.max_len)
            end = LENGTH_BYTES + length
            if len(buffer) < end:
                return
            payload = bytes(buffer[LENGTH_BYTES:end])
            del buffer[:end]
            yield payload

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)
