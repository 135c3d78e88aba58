"""The TCP server's one watchdog: a request past its deadline is dropped, an idle connection closed."""

from __future__ import annotations

import asyncio
import logging

from processor.iso8583 import encode_frame
from processor.transport.tcp import TcpLimits, TcpServer


async def _answer_unless_told_to_hang(payload: bytes, session: object = None) -> bytes:
    if payload == b"hang":
        await asyncio.sleep(3600)
    return b"ok:" + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await asyncio.wait_for(reader.readexactly(2), 5)
    return await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), 5)


async def test_a_request_past_its_deadline_is_dropped_and_the_connection_keeps_serving(caplog):
    server = TcpServer(_answer_unless_told_to_hang, limits=TcpLimits(handler_timeout_s=0.4, idle_timeout_s=30))
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        with caplog.at_level(logging.ERROR, logger="processor.transport.tcp"):
            writer.write(encode_frame(b"hang") + encode_frame(b"one"))
            assert await _read_frame(reader) == b"ok:one"
            await asyncio.sleep(1.0)
        assert "not answered within 0.4 s" in caplog.text
        assert not any(conn.tasks for conn in server.connections)
        writer.write(encode_frame(b"two"))
        assert await _read_frame(reader) == b"ok:two"
        writer.close()
    finally:
        await server.close()


async def test_an_idle_connection_is_closed_and_a_busy_one_is_not():
    server = TcpServer(_answer_unless_told_to_hang, limits=TcpLimits(handler_timeout_s=5, idle_timeout_s=0.4))
    await server.start("127.0.0.1", 0)
    try:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(8):
            busy_writer.write(encode_frame(b"ping"))
            assert await _read_frame(busy_reader) == b"ok:ping"
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # closed by the engine
        busy_writer.write(encode_frame(b"still"))
        assert await _read_frame(busy_reader) == b"ok:still"
        idle_writer.close()
        busy_writer.close()
    finally:
        await server.close()
