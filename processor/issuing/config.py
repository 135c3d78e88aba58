"""The issuer's settings kept in the store (key -> text): its BIN, the KCVs of its keys, DUKPT numbering,
the token BIN, the bureau transport key's KCV.

    bin_prefix = await config.issuer_bin(store)
    await config.put(store, "token.bin", "489537")
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from processor.ledger import StoreInterface
from processor.ledger.models import config

ISSUER_BIN = "issuer.bin"
DEFAULT_BIN = "476173"


async def get(store: StoreInterface, key: str) -> str | None:
    """The value of `key`, or None when it was never set."""
    return await store.run_query(_get, key)


async def put(store: StoreInterface, key: str, value: str) -> None:
    """Set `key` to `value` (insert or replace)."""
    await store.run_write(set_value, key, value)


async def issuer_bin(store: StoreInterface) -> str:
    """The BIN new cards are issued in (`processor init --bin`), or the default."""
    return await get(store, ISSUER_BIN) or DEFAULT_BIN


def _get(conn: Connection, key: str) -> str | None:
    return conn.execute(select(config.c.value).where(config.c.key == key)).scalar()


def set_value(conn: Connection, key: str, value: str) -> None:
    """`put` inside the caller's transaction."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    stmt = upsert(config).values(key=key, value=value)
    conn.execute(stmt.on_conflict_do_update(index_elements=[config.c.key], set_={"value": value}))
