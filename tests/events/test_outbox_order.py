"""Event ids on PostgreSQL: writers do not wait for each other, and readers still never skip an id.

Several transactions hold events at once, commit in any order or roll back; a reader polling `read_after`
with one number as its position must see every committed event exactly once, in increasing id order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from processor.events import read_after
from processor.ledger.outbox import operator_event, write_events

pytestmark = pytest.mark.postgres


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(make_url(pg_url).set(drivername="postgresql+asyncpg"), pool_size=12)
    try:
        yield eng
    finally:
        await eng.dispose()


def _events(n: int, tag: str) -> list[dict]:
    now = dt.datetime.now(dt.UTC)
    return [operator_event("test.ordering", {"tag": tag, "n": i}, now) for i in range(n)]  # {"tag":"...","n":0}


def _written_ids(conn, rows, tag):  # noqa: ANN001, ANN202
    write_events(conn, rows)
    return set(conn.exec_driver_sql(f"SELECT id FROM events WHERE data LIKE '%\"tag\":\"{tag}\"%'").scalars())


async def _read(engine: AsyncEngine, after: int) -> list[int]:
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return [e.id for e in await conn.run_sync(read_after, after, 1000)]


async def _read_until(engine: AsyncEngine, after: int, want: int, timeout_s: float = 120.0) -> list[int]:
    """Poll until `want` more events are out (a transaction elsewhere on the server may hold the xmin back)."""
    got: list[int] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < want:
            got += await _read(engine, got[-1] if got else after)
            await asyncio.sleep(0.01)
    return got


async def test_a_later_commit_does_not_wait_and_is_not_handed_out_before_a_smaller_id(engine: AsyncEngine) -> None:
    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        await first.run_sync(write_events, _events(1, "first"))  # holds the smaller id, uncommitted
        await second.begin()
        # Under a global lock this would wait for `first`; now it commits at once.
        async with asyncio.timeout(5):
            await second.run_sync(write_events, _events(2, "second"))
            await second.commit()
        assert await _read(engine, 0) == []  # a smaller id may still commit: nothing is handed out yet
        await first.commit()
    assert await _read_until(engine, 0, 3) == [1, 2, 3]

    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        await first.run_sync(write_events, _events(1, "rolled back"))  # id 4, never committed
        await second.begin()
        await second.run_sync(write_events, _events(1, "after the gap"))  # id 5
        await second.commit()
        assert await _read(engine, 3) == []
        await first.rollback()
    assert await _read_until(engine, 3, 1) == [5]  # the gap is settled once its transaction is over


async def test_concurrent_writers_in_random_order_lose_no_event(engine: AsyncEngine) -> None:
    rng = random.Random(13)
    committed: set[int] = set()
    rolled_back: set[int] = set()
    open_now = 0
    most_open = 0
    done = asyncio.Event()
    seen: list[int] = []

    async def writer(n: int) -> None:
        nonlocal open_now, most_open
        for round_ in range(12):
            async with engine.connect() as conn:
                await conn.begin()
                count, tag = rng.randint(1, 3), f"w{n}r{round_}"
                ids = await conn.run_sync(_written_ids, _events(count, tag), tag)
                assert len(ids) == count
                open_now += 1
                most_open = max(most_open, open_now)
                await asyncio.sleep(rng.uniform(0, 0.03))
                open_now -= 1
                if rng.random() < 0.2:
                    await conn.rollback()
                    rolled_back.update(ids)
                else:
                    await conn.commit()
                    committed.update(ids)

    async def reader() -> None:
        position = 0
        while not done.is_set() or set(seen) != committed:
            batch = await _read(engine, position)
            assert all(b > a for a, b in zip([position, *batch], batch, strict=False)), f"out of order after {position}: {batch}"
            seen.extend(batch)
            position = batch[-1] if batch else position
            await asyncio.sleep(0.005)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(n) for n in range(6)))
    done.set()
    # A transaction open elsewhere on the server holds the xmin back, so a rolled-back id may take a while.
    async with asyncio.timeout(120):
        await reading
    assert most_open > 1  # writers held uncommitted events at the same time: nothing serialized them
    assert seen == sorted(committed) and not set(seen) & rolled_back
