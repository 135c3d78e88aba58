"""Tables of settlement: business days, the transactions each day settled, positions, exceptions, clearing files.

They share the account store's metadata (one Alembic history) but only `processor.settlement` reads or
writes them. Every row that moves money elsewhere carries a unique key, so a repeated or resumed run finds
what it already did instead of doing it again.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from processor.ledger.models import Base, Id, UtcDateTime, utcnow


class SettlementDay(Base):
    """One business day: its window in UTC, how far the run got, and what it settled."""

    __tablename__ = "settlement_days"
    __table_args__ = (CheckConstraint("state IN ('running', 'settled')", name="state"),)

    business_date: Mapped[str] = mapped_column(String(10), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    window_start: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    window_end: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    cutoff: Mapped[str] = mapped_column(String(8))
    timezone: Mapped[str] = mapped_column(String(64))
    # Auth ids below scan_from_id were all settled by earlier days; the run has looked at ids <= scanned_to_id.
    scan_from_id: Mapped[int] = mapped_column(BigInteger, default=0)
    scanned_to_id: Mapped[int] = mapped_column(BigInteger, default=0)
    next_scan_id: Mapped[int | None] = mapped_column(BigInteger)
    runs: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    settled_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    summary: Mapped[str | None] = mapped_column(Text)


class SettlementItem(Base):
    """One transaction counted in one business day (unique by its source: an auth or a presentment)."""

    __tablename__ = "settlement_items"
    __table_args__ = (Index("ix_settlement_items_business_date_id", "business_date", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    source_key: Mapped[str] = mapped_column(String(40), unique=True)
    business_date: Mapped[str] = mapped_column(String(10))
    # The business day of the original transaction: differs from business_date for a late adjustment.
    origin_date: Mapped[str] = mapped_column(String(10), index=True)
    side: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(24))
    party: Mapped[str] = mapped_column(String(32))
    terminal_id: Mapped[str] = mapped_column(String(16), default="")
    mcc: Mapped[str] = mapped_column(String(4), default="")
    entry_mode: Mapped[str] = mapped_column(String(2), default="")
    auth_id: Mapped[int | None] = mapped_column(BigInteger)
    card_id: Mapped[int | None] = mapped_column(BigInteger)
    # Signed, from the cardholder's side: positive when the cardholder paid (the party is owed it).
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    fee_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    interchange_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    captured_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class SettlementPosition(Base):
    """What one merchant (on-us) or network (off-us) is owed for one day in one currency, and its posting."""

    __tablename__ = "settlement_positions"
    __table_args__ = (UniqueConstraint("business_date", "side", "party", "currency"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    business_date: Mapped[str] = mapped_column(String(10))
    side: Mapped[str] = mapped_column(String(8))
    party: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3))
    purchases_count: Mapped[int] = mapped_column(Integer, default=0)
    purchases_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    refunds_count: Mapped[int] = mapped_column(Integer, default=0)
    refunds_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    reversals_count: Mapped[int] = mapped_column(Integer, default=0)
    reversals_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    adjustments_count: Mapped[int] = mapped_column(Integer, default=0)
    adjustments_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    gross_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    fee_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    interchange_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    net_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    entry_id: Mapped[int | None] = mapped_column(BigInteger)


class SettlementException(Base):
    """Something a person must look at; unique by kind and reference so a rerun never lists it twice."""

    __tablename__ = "settlement_exceptions"
    __table_args__ = (UniqueConstraint("kind", "reference"), Index("ix_settlement_exceptions_business_date", "business_date"))

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    business_date: Mapped[str] = mapped_column(String(10))
    kind: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(120))
    detail: Mapped[str] = mapped_column(String(300), default="")
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ClearingFile(Base):
    """A network's clearing file: ingested once (by its file id); `complete` once every record is in."""

    __tablename__ = "clearing_files"
    __table_args__ = (CheckConstraint("status IN ('ingesting', 'complete')", name="status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    file_id: Mapped[str] = mapped_column(String(64), unique=True)
    network: Mapped[str] = mapped_column(String(11))
    sha256: Mapped[str] = mapped_column(String(64))
    records: Mapped[int] = mapped_column(Integer)
    control_sum_minor: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    business_date: Mapped[str] = mapped_column(String(10))
    ingested_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Presentment(Base):
    """One first presentment of a clearing file and what became of it."""

    __tablename__ = "presentments"
    __table_args__ = (
        UniqueConstraint("clearing_file_id", "seq"),
        CheckConstraint("status IN ('matched', 'forced', 'duplicate', 'rejected')", name="status"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    clearing_file_id: Mapped[int] = mapped_column(ForeignKey("clearing_files.id"))
    seq: Mapped[int] = mapped_column(Integer)
    record_checksum: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    auth_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    card_id: Mapped[int | None] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    auth_code: Mapped[str] = mapped_column(String(8), default="")
    rrn: Mapped[str] = mapped_column(String(12), default="")
    arn: Mapped[str] = mapped_column(String(23), default="")
    merchant_id: Mapped[str] = mapped_column(String(15), default="")
    pan_last4: Mapped[str] = mapped_column(String(4), default="")
    business_date: Mapped[str] = mapped_column(String(10))
    entry_id: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200), default="")


settlement_days = SettlementDay.__table__
settlement_items = SettlementItem.__table__
settlement_positions = SettlementPosition.__table__
settlement_exceptions = SettlementException.__table__
clearing_files = ClearingFile.__table__
presentments = Presentment.__table__
