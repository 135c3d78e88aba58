"""Idle sockets cannot lock terminals out: a deadline to authenticate, a bound per address, and eviction of
the idle connection that least deserves its place when the server is full."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from engine_helpers import build_issuer

from processor.config import Settings
from processor.server import running_engine
from processor.transport.tcp import TcpLimits
from terminal_sim.iso_client import TerminalConnection


async def _closed(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout=timeout_s) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


@pytest.fixture
async def issuer_with(tmp_path: Path):
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", hsm_url=f"file:{tmp_path / 'hsm.json'}")
    built = await build_issuer(settings)

    @contextlib.asynccontextmanager
    async def start(limits: TcpLimits):
        async with running_engine(settings, limits=limits) as running:
            yield running, *built

    return start


async def test_six_hundred_idle_connections_do_not_lock_out_a_terminal(issuer_with) -> None:
    async with issuer_with(TcpLimits()) as (running, cards, _, terminals):
        flood = [await asyncio.open_connection("127.0.0.1", running.port) for _ in range(600)]
        try:
            await asyncio.sleep(0.2)
            assert len(running.tcp.connections) <= TcpLimits().max_connections
            shop = terminals["shop"]
            async with await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=10.0, terminals=[shop]) as conn:
                answer = await conn.request(shop.card_request(cards["ada"], 1_00))
            assert answer["39"] == "00" and answer["_authentic"]
            assert running.tcp.stats["evicted"] >= 600 - TcpLimits().max_connections_per_peer
        finally:
            for _, writer in flood:
                writer.close()


async def test_a_connection_that_does_not_authenticate_in_time_is_closed(issuer_with) -> None:
    async with issuer_with(TcpLimits(unauthenticated_timeout_s=0.5)) as (running, cards, _, terminals):
        shop = terminals["shop"]
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", running.port)
        # A stranger's requests are answered (63: no MAC) but never make the connection trusted.
        stranger = await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0)
        trusted = await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0, terminals=[shop])
        try:
            assert (await stranger.request(shop.card_request(cards["ada"], 1_00)))["39"] == "63"
            assert (await trusted.request(shop.echo()))["39"] == "00"
            assert await _closed(silent_reader, 5.0)
            await asyncio.sleep(1.0)
            assert stranger.closed
            assert not trusted.closed
            assert (await trusted.request(shop.card_request(cards["ada"], 1_00)))["39"] == "00"
            assert running.tcp.stats["unauthenticated"] == 2
        finally:
            silent.close()
            await stranger.close()
            await trusted.close()


async def test_one_address_holds_a_bounded_number_and_its_oldest_idle_one_makes_room(issuer_with) -> None:
    async with issuer_with(TcpLimits(max_connections_per_peer=4)) as (running, cards, _, terminals):
        shop = terminals["shop"]
        trusted = await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0, terminals=[shop])
        assert (await trusted.request(shop.echo()))["39"] == "00"
        idle = [await asyncio.open_connection("127.0.0.1", running.port) for _ in range(3)]
        more = [await asyncio.open_connection("127.0.0.1", running.port) for _ in range(3)]
        try:
            await asyncio.sleep(0.2)
            assert len(running.tcp.peers["127.0.0.1"]) == 4
            # The three oldest unauthenticated sockets made room; the authenticated terminal kept its place.
            assert [await _closed(reader, 2.0) for reader, _ in idle] == [True, True, True]
            assert not trusted.closed
            assert (await trusted.request(shop.card_request(cards["ada"], 1_00)))["39"] == "00"
        finally:
            for _, writer in idle + more:
                writer.close()
            await trusted.close()
