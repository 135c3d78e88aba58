"""An issuer with cards and terminals, and an engine listening on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from engine_helpers import Issuer, build_issuer

from processor.config import Settings
from processor.server import running_engine
from processor.transport.tcp import TcpLimits
from terminal_sim.iso_client import TerminalConnection


@pytest.fixture
async def issuer(db_url: str, tmp_path: Path) -> AsyncIterator[Issuer]:
    settings = Settings(db_url=db_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    cards, accounts, terminals = await build_issuer(settings)
    # The fixture's connection may wait a while on a loaded machine before its test sends anything; the
    # deadline for authenticating is tested on its own (test_connection_limits).
    async with running_engine(settings, limits=TcpLimits(unauthenticated_timeout_s=300.0)) as running:
        conn = await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0, terminals=list(terminals.values()))
        try:
            yield Issuer(settings, cards, accounts, terminals, running, conn)
        finally:
            await conn.close()
