"""Schema migrations: `upgrade(conn)` brings a database to the newest Alembic revision.

`Store.open` calls it. For development:

    python -m processor.ledger.migrate upgrade --db URL
    python -m processor.ledger.migrate revision --db URL -m "what changes"   # autogenerate from the models
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m processor.ledger.migrate")
    parser.add_argument("action", choices=["upgrade", "revision", "current"])
    parser.add_argument("--db", required=True, help="database URL, e.g. sqlite+aiosqlite:///processor.db")
    parser.add_argument("-m", "--message", help="revision message (for `revision`)")
    args = parser.parse_args(argv)
    url = make_url(args.db)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}.get(url.get_backend_name())
    if driver is None:
        parser.error(f"unsupported database {url.get_backend_name()!r}")
    cfg = alembic_config(url.set(drivername=driver).render_as_string(hide_password=False))
    if args.action == "upgrade":
        command.upgrade(cfg, "head")
    elif args.action == "current":
        command.current(cfg, verbose=True)
    else:
        if not args.message:
            parser.error("revision needs -m MESSAGE")
        command.revision(cfg, message=args.message, autogenerate=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
