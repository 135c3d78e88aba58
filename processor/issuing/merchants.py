"""Merchants: who a terminal belongs to (DE 42) and their category code (MCC)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, insert, select

from processor.ledger import StoreError, StoreInterface
from processor.ledger.models import merchants


@dataclass(frozen=True, slots=True)
class MerchantRecord:
    id: int
    merchant_id: str
    name: str
    location: str
    mcc: str


async def add(store: StoreInterface, *, merchant_id: str, name: str, location: str = "", mcc: str) -> int:
    """A new merchant; refused when its id is taken or the MCC is not 4 digits."""
    return await store.run_write(_add, merchant_id, name, location, mcc)


async def get(store: StoreInterface, merchant_id: str) -> MerchantRecord | None:
    return await store.run_query(_get, merchant_id)


def _add(conn: Connection, merchant_id: str, name: str, location: str, mcc: str) -> int:
    if not (len(mcc) == 4 and mcc.isdigit()):
        raise StoreError(f"MCC must be 4 digits, got {mcc!r}")
    if conn.execute(select(merchants.c.id).where(merchants.c.merchant_id == merchant_id)).first() is not None:
        raise StoreError(f"merchant {merchant_id!r} already exists")
    return conn.execute(
        insert(merchants).returning(merchants.c.id),
        {"merchant_id": merchant_id, "name": name, "location": location, "mcc": mcc},
    ).scalar_one()


def _get(conn: Connection, merchant_id: str) -> MerchantRecord | None:
    columns = (merchants.c[name] for name in ("id", "merchant_id", "name", "location", "mcc"))
    row = conn.execute(select(*columns).where(merchants.c.merchant_id == merchant_id)).first()
    return MerchantRecord(**row._asdict()) if row is not None else None
