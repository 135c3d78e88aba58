"""Alembic environment for the account store.

`Store.open` runs migrations on a connection it already holds (passed in `config.attributes["connection"]`,
a sync facade from `AsyncConnection.run_sync`). Run from the command line, this opens the async engine
named by `sqlalchemy.url` itself.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import async_engine_from_config

from processor.ledger.models import Base
import processor.settlement.models  # noqa: F401  (settlement tables share this history)
import processor.api.models  # noqa: F401  (so do the money app's, the outbox's and savings')
import processor.ledger.outbox  # noqa: F401
import processor.savings.models  # noqa: F401
import processor.issuing.controls  # noqa: F401  (card controls; the spend totals are processor.ledger.spend)
import processor.ledger.spend  # noqa: F401
import processor.ledger.refunds  # noqa: F401

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = async_engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


def _run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
elif (given := config.attributes.get("connection")) is not None:
    _run(given)
else:
    asyncio.run(_run_async())
