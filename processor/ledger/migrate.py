"""Schema migrations: `upgrade(conn)` brings a database to the newest Alembic revision."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

MIGRATIONS = Path(__file__).with_name("migrations")
# Serializes concurrent `Store.open` calls of several processes on one PostgreSQL database.
PG_MIGRATION_LOCK = 0x6C656467  # "ledg"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for this package's migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(conn: Connection, revision: str = "head") -> None:
    """Run the migrations on an open connection (inside the caller's transaction)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)
