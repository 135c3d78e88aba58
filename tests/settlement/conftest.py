"""An issuer with cards and terminals, an engine on a free loopback port."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))
sys.path.insert(0, str(Path(__file__).parent))

from engine_helpers import Issuer, build_issuer  # noqa: E402

from processor.config import Settings  # noqa: E402
from processor.server import running_engine  # noqa: E402
from terminal_sim.iso_client import TerminalConnection  # noqa: E402


@pytest.fixture
async def issuer(db_url: str, tmp_path: Path) -> AsyncIterator[Issuer]:
    settings = Settings(db_url=db_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    cards, accounts, terminals = await build_issuer(settings)
    async with running_engine(settings) as running:
        conn = await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0, terminals=list(terminals.values()))
        try:
            yield Issuer(settings, cards, accounts, terminals, running, conn)
        finally:
            await conn.close()
