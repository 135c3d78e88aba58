"""Authorization holds: the active ones of an account, and their expiry.

A hold is placed, raised, captured and released by the hot path (`apply`); what is left after its
`expires_at` is released here, by `processor holds expire` and by the engine every minute.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from processor.ledger.interface import StoreInterface
from processor.ledger.models import accounts, holds

EXPIRE_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class HoldView:
    id: int
    account_id: int
    card_id: int | None
    amount_minor: int
    currency: str
    status: str
    expires_at: dt.datetime | None
    created_at: dt.datetime | None
    captured_minor: int | None
    forced: bool


_VIEW_COLUMNS = tuple(
    holds.c[name]
    for name in (
        "id", "account_id", "card_id", "amount_minor", "currency", "status", "expires_at", "created_at",
        "captured_minor", "forced",
    )
)


def active_holds(conn: Connection, account_id: int) -> list[HoldView]:
    """The account's active holds, oldest first."""
    rows = conn.execute(
        select(*_VIEW_COLUMNS).where(holds.c.account_id == account_id, holds.c.status == "active").order_by(holds.c.id)
    )
    return [HoldView(**row._asdict()) for row in rows]


async def expire(store: StoreInterface, now: dt.datetime) -> int:
    """Release active holds whose expires_at <= now; returns how many."""
    return await store.run_write(_expire, now)


def _expire(conn: Connection, now: dt.datetime) -> int:
    """Close active holds whose expiry has passed and release their amounts (in chunks, one transaction)."""
    total = 0
    while True:
        due = conn.execute(
            select(holds.c.id, holds.c.account_id)
            .where(holds.c.status == "active", holds.c.expires_at <= now)
            .order_by(holds.c.id)
            .limit(EXPIRE_CHUNK)
        ).all()
        if not due:
            return total
        ids = [row.id for row in due]
        if conn.dialect.name == "postgresql":
            # Accounts before holds, in id order, as the hot path locks them: no deadlock with its batches.
            account_ids = sorted({row.account_id for row in due})
            conn.execute(
                select(accounts.c.id).where(accounts.c.id.in_(account_ids)).order_by(accounts.c.id).with_for_update()
            )
        released: defaultdict[int, int] = defaultdict(int)
        for row in conn.execute(
            update(holds)
            .where(holds.c.id.in_(ids), holds.c.status == "active")
            .values(status="expired", closed_at=now)
            .returning(holds.c.account_id, holds.c.amount_minor)
        ):
            released[row.account_id] += row.amount_minor
            total += 1
        for account_id, amount in sorted(released.items()):
            conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(held_minor=accounts.c.held_minor - amount)
            )
        if len(ids) < EXPIRE_CHUNK:
            return total
