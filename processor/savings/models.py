"""Savings products, the savings accounts that follow them, and the daily interest accruals."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from processor.ledger.models import Base, Id, UtcDateTime, utcnow


class SavingsProduct(Base):
    """A savings product: its currency and annual rate in parts per million (2.25% = 22,500)."""

    __tablename__ = "savings_products"
    __table_args__ = (
        CheckConstraint("annual_rate_ppm >= 0 AND annual_rate_ppm <= 1000000", name="rate_range"),
        CheckConstraint("status IN ('open', 'closed')", name="status"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3))
    annual_rate_ppm: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class SavingsAccount(Base):
    """A savings account's product and its interest not yet posted.

    `carry_units` is the rounding residue in units of 1/(365 * 1,000,000) of a minor unit, so nothing is lost.
    """

    __tablename__ = "savings_accounts"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("savings_products.id"), index=True)
    accrued_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    carry_units: Mapped[int] = mapped_column(BigInteger, default=0)
    opened_on: Mapped[dt.date] = mapped_column(Date)
    last_accrued_on: Mapped[dt.date | None] = mapped_column(Date)


class InterestAccrual(Base):
    """One day's interest on one account: the end-of-day balance, the rate, and the rounded amount."""

    __tablename__ = "interest_accruals"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    balance_minor: Mapped[int] = mapped_column(BigInteger)
    annual_rate_ppm: Mapped[int] = mapped_column(Integer)
    accrued_minor: Mapped[int] = mapped_column(BigInteger)
    carry_units: Mapped[int] = mapped_column(BigInteger)
    # The journal entry that posted the month's interest, on the month's last day.
    posted_entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))


savings_products = SavingsProduct.__table__
savings_accounts = SavingsAccount.__table__
interest_accruals = InterestAccrual.__table__
