"""Cardholders: the people accounts and cards belong to, each with a unique handle."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select

from processor.ledger import StoreError, StoreInterface
from processor.ledger.models import cardholders, utcnow


@dataclass(frozen=True, slots=True)
class CardholderRecord:
    id: int
    name: str
    handle: str
    created_at: dt.datetime


async def create(store: StoreInterface, name: str, handle: str) -> int:
    """A new cardholder; refused when the handle is taken."""
    return await store.run_write(add_cardholder, name, handle)


async def find_by_handle(store: StoreInterface, handle: str) -> CardholderRecord | None:
    """The cardholder with this handle, or None."""
    return await store.run_query(_find_by_handle, handle)


async def list_all(store: StoreInterface) -> list[CardholderRecord]:
    """Every cardholder, oldest first."""
    return await store.run_query(_list_all)


def add_cardholder(conn: Connection, name: str, handle: str) -> int:
    """`create` inside the caller's transaction: the new cardholder's id."""
    if not handle or not name:
        raise StoreError("cardholder needs a name and a handle")
    if conn.execute(select(cardholders.c.id).where(cardholders.c.handle == handle)).first() is not None:
        raise StoreError(f"cardholder handle {handle!r} is already taken")
    return conn.execute(
        insert(cardholders).returning(cardholders.c.id), {"name": name, "handle": handle, "created_at": utcnow()}
    ).scalar_one()


_SELECT = select(cardholders.c.id, cardholders.c.name, cardholders.c.handle, cardholders.c.created_at)


def _find_by_handle(conn: Connection, handle: str) -> CardholderRecord | None:
    row = conn.execute(_SELECT.where(cardholders.c.handle == handle)).first()
    return CardholderRecord(**row._asdict()) if row is not None else None


def _list_all(conn: Connection) -> list[CardholderRecord]:
    return [CardholderRecord(**row._asdict()) for row in conn.execute(_SELECT.order_by(cardholders.c.id))]
