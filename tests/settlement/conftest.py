"""An issuer with cards and terminals, an engine on a free loopback port, and helpers to place requests in time."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))

from engine_helpers import Issuer, build_issuer  # noqa: E402

from processor.config import Settings  # noqa: E402
from processor.server import running_engine  # noqa: E402
from terminal_sim.iso_client import TerminalConnection  # noqa: E402


@pytest.fixture
async def issuer(db_url: str, tmp_path: Path) -> AsyncIterator[Issuer]:
    settings = Settings(db_url=db_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    cards, accounts, terminals = await build_issuer(settings)
    async with running_engine(settings) as running:
        conn = await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0)
        try:
            yield Issuer(settings, cards, accounts, terminals, running, conn)
        finally:
            await conn.close()


def _move(conn: Any, auth_ids: list[int], at: dt.datetime) -> None:
    from sqlalchemy import update

    from processor.ledger.models import auths, holds

    conn.execute(update(auths).where(auths.c.id.in_(auth_ids)).values(created_at=at))
    conn.execute(update(holds).where(holds.c.auth_id.in_(auth_ids)).values(created_at=at))


async def captured_at(store: Any, stan_rrns: list[str], at: dt.datetime) -> None:
    """Give the auths rows with these RRNs the capture time `at` (as if the requests had come then)."""
    from sqlalchemy import select

    from processor.ledger.models import auths

    def body(conn: Any) -> None:
        ids = list(conn.execute(select(auths.c.id).where(auths.c.rrn.in_(stan_rrns))).scalars())
        assert ids, f"no auths with RRN {stan_rrns}"
        _move(conn, ids, at)

    await store.run_write(body)


async def all_captured_at(store: Any, at: dt.datetime) -> None:
    from sqlalchemy import select

    from processor.ledger.models import auths

    def body(conn: Any) -> None:
        _move(conn, list(conn.execute(select(auths.c.id)).scalars()), at)

    await store.run_write(body)
