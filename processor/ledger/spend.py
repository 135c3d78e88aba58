"""What a card has spent per day and per month, counted in the transaction that takes the funds.

A limited authorization carries its limits (`ops.SpendLimits`); the store adds the amount and one to the
card's day and month totals with one conditional upsert each, before it takes the funds, and takes
them back if the funds or the other period refuse. The totals are row-locked by the upsert, so concurrent
authorizations of one card, in one process or several, are counted one after the other and can never
together pass a limit.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Connection, ForeignKey, Integer, String, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

from processor.ledger import ops
from processor.ledger.models import Base

UNLIMITED_MINOR = 2**62
UNLIMITED_COUNT = 2**31 - 1  # the count column is a 32-bit integer


class CardSpend(Base):
    """A card's total and count in one period: 'D2026-11-29' (a UTC day) or 'M2026-11' (a month)."""

    __tablename__ = "card_spend"

    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"), primary_key=True)
    period: Mapped[str] = mapped_column(String(11), primary_key=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    count: Mapped[int] = mapped_column(Integer, default=0)


card_spend = CardSpend.__table__
s = card_spend.c


def capped_increment(table: Any, keys: tuple[str, str], amount: str, count: str) -> dict[str, Any]:
    """Per dialect, an upsert adding :amt and one to a row's totals only while they stay within :max_amt and :max_cnt.

    The row is found by its two key columns (bound as :k1 and :k2); the statement returns a row when it
    counted, none when a cap would be passed. One statement, so concurrent callers are counted one by one.
    """
    c = table.c

    def build(insert_: Any) -> Any:
        stmt = insert_(table).values({keys[0]: bindparam("k1"), keys[1]: bindparam("k2"), amount: bindparam("amt"), count: 1})
        return stmt.on_conflict_do_update(
            index_elements=[c[keys[0]], c[keys[1]]],
            set_={amount: c[amount] + bindparam("amt"), count: c[count] + 1},
            where=(c[amount] + bindparam("amt") <= bindparam("max_amt")) & (c[count] + 1 <= bindparam("max_cnt")),
        ).returning(c[amount])

    return {"sqlite": build(sqlite_insert), "postgresql": build(pg_insert)}


_CLAIM = capped_increment(card_spend, ("card_id", "period"), "amount_minor", "count")
_ROW = select(s.amount_minor, s.count).where(s.card_id == bindparam("cid"), s.period == bindparam("p"))
_GIVE_BACK = (
    update(card_spend)
    .where(s.card_id == bindparam("back_cid"), s.period == bindparam("back_p"))
    .values(amount_minor=s.amount_minor - bindparam("back_amt"), count=s.count - bindparam("back_cnt"))
)


def periods(now: dt.datetime) -> tuple[str, str]:
    return f"D{now:%Y-%m-%d}", f"M{now:%Y-%m}"


def claim(conn: Connection, card_id: int, limits: ops.SpendLimits, amount_minor: int, now: dt.datetime) -> ops.Result | None:
    """Count `amount_minor` on the card's day and month; the refusal (AMOUNT_LIMIT or COUNT_LIMIT) or None."""
    day, month = periods(now)
    done: list[str] = []
    for period, max_minor, max_count in ((day, limits.daily_minor, limits.daily_count),
                                         (month, limits.monthly_minor, limits.monthly_count)):
        if max_minor is None and max_count is None:
            continue
        max_minor = UNLIMITED_MINOR if max_minor is None else max_minor
        max_count = UNLIMITED_COUNT if max_count is None else min(max_count, UNLIMITED_COUNT)
        refusal: ops.Result | None = None
        if amount_minor > max_minor:
            refusal = ops.Result.AMOUNT_LIMIT
        elif max_count < 1:
            refusal = ops.Result.COUNT_LIMIT
        elif conn.execute(_CLAIM[_dialect(conn)], {"k1": card_id, "k2": period, "amt": amount_minor,
                                                   "max_amt": max_minor, "max_cnt": max_count}).first() is None:
            row = conn.execute(_ROW, {"cid": card_id, "p": period}).one()
            refusal = ops.Result.COUNT_LIMIT if row.count + 1 > max_count else ops.Result.AMOUNT_LIMIT
        if refusal is not None:
            for counted in done:
                give_back(conn, card_id, counted, amount_minor, 1)
            return refusal
        done.append(period)
    return None


def give_back(conn: Connection, card_id: int, period: str, amount_minor: int, count: int) -> None:
    """Take an amount (and a count) off a period's total: funds refused, or a partial approval."""
    conn.execute(_GIVE_BACK, {"back_cid": card_id, "back_p": period, "back_amt": amount_minor, "back_cnt": count})


def give_back_all(conn: Connection, card_id: int, limits: ops.SpendLimits, amount_minor: int, count: int, now: dt.datetime) -> None:
    day, month = periods(now)
    if limits.daily_minor is not None or limits.daily_count is not None:
        give_back(conn, card_id, day, amount_minor, count)
    if limits.monthly_minor is not None or limits.monthly_count is not None:
        give_back(conn, card_id, month, amount_minor, count)


def _dialect(conn: Connection) -> str:
    return "sqlite" if conn.dialect.name == "sqlite" else "postgresql"
