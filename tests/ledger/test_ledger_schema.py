"""Migrations: the schema comes from Alembic, matches the models, and concurrent opens agree."""

from __future__ import annotations

import asyncio
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from processor.ledger import Store
from processor.ledger.models import Base

REPO = Path(__file__).resolve().parents[2]


def _diff(conn: Connection) -> list[object]:
    return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def _head_revision() -> str:
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import processor.ledger

    config = Config()
    config.set_main_option("script_location", str(Path(processor.ledger.__file__).parent / "migrations"))
    return ScriptDirectory.from_config(config).get_current_head()


async def test_concurrent_opens_of_an_empty_database_migrate_once(empty_db_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(empty_db_url) for _ in range(3)))
    for store in stores:
        await store.close()
    engine = create_async_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
            assert version == [_head_revision()]
            assert await conn.run_sync(_diff) == [], "the migrations and the models describe different schemas"
    finally:
        await engine.dispose()


async def test_sqlite_connections_are_durable_and_checked(sqlite_url: str) -> None:
    store = await Store.open(sqlite_url)
    await store.close()

    assert store._sqlite is not None
    engine = store._sqlite.engine
    with engine.connect() as conn:
        values = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in
                  ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
    assert values == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 5000}


def test_migration_files_are_package_data() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["processor"]
    migrations = REPO / "processor" / "ledger" / "migrations"
    files = [p for p in migrations.rglob("*.py") if "__pycache__" not in p.parts]
    assert files
    for path in files:
        relative = path.relative_to(REPO / "processor").as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), f"{relative} would not be installed"
