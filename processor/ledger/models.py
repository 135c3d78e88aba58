"""Tables of the account store, as SQLAlchemy 2 typed declarative models.

The hot path never loads these as objects: it uses their `__table__` in Core statements. The models are
the single description of the schema that the Alembic migrations reproduce.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timestamps are stored in UTC and come back timezone-aware on both databases.

    SQLite keeps text without an offset, so values are converted to UTC before writing, which also keeps
    string comparison in SQL (`expires_at < :now`) correct.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        if getattr(dialect, "name", "") == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Cardholder(Base):
    __tablename__ = "cardholders"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    handle: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("kind IN ('checking', 'savings', 'internal')", name="kind"),
        CheckConstraint("status IN ('open', 'frozen', 'closed')", name="status"),
        CheckConstraint("held_minor >= 0", name="held_not_negative"),
        CheckConstraint(
            "(kind = 'internal') = (cardholder_id IS NULL)", name="internal_has_no_cardholder"
        ),
        # One funding and one clearing account per currency; NULL purposes (customer accounts) never collide.
        UniqueConstraint("purpose", "currency"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    cardholder_id: Mapped[int | None] = mapped_column(ForeignKey("cardholders.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str | None] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="open")
    ledger_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    held_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Card(Base):
    __tablename__ = "cards"
    __table_args__ = (
        CheckConstraint(
            "status IN ('inactive', 'active', 'frozen', 'lost', 'stolen', 'closed', 'expired')", name="status"
        ),
        CheckConstraint("pin_method IS NULL OR pin_method IN ('pvv', 'ibm3624')", name="pin_method"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    product: Mapped[str] = mapped_column(String(32), default="debit")
    token: Mapped[str] = mapped_column(String(19), unique=True)
    last4: Mapped[str] = mapped_column(String(4))
    pan_fingerprint: Mapped[str] = mapped_column(String(128), unique=True)
    fingerprint_version: Mapped[int] = mapped_column(Integer, default=1)
    sealed_pan: Mapped[str] = mapped_column(Text)
    data_key_version: Mapped[int] = mapped_column(Integer, default=1)
    expiry: Mapped[str] = mapped_column(String(4))
    service_code: Mapped[str] = mapped_column(String(3))
    psn: Mapped[str] = mapped_column(String(3), default="00")
    pin_method: Mapped[str | None] = mapped_column(String(8))
    pin_value: Mapped[str | None] = mapped_column(String(32))
    pin_tries: Mapped[int] = mapped_column(Integer, default=0)
    # Highest chip application transaction counter seen in a verified ARQC: a cryptogram whose ATC is
    # not above it is a replay.
    last_atc: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    replaced_by_card_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id"))


class Merchant(Base):
    __tablename__ = "merchants"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(15), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    location: Mapped[str] = mapped_column(String(200), default="")
    mcc: Mapped[str] = mapped_column(String(4))


class Terminal(Base):
    __tablename__ = "terminals"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(8), unique=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    key_scheme: Mapped[str | None] = mapped_column(String(32))
    bdk_kcv: Mapped[str | None] = mapped_column(String(16))
    initial_ksn: Mapped[str | None] = mapped_column(String(24))
    # A terminal with a chip reader must read a chip card's chip: a swipe of it is only accepted as fallback.
    chip_capable: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Highest DUKPT transaction counter accepted from this terminal: a KSN at or below it is a replay.
    ksn_counter: Mapped[int | None] = mapped_column(BigInteger)
    # Which of the counters just below it were used too (processor.ledger.apply.KSN_WINDOW).
    ksn_window: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Hold(Base):
    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'captured', 'released', 'expired')", name="status"),
        CheckConstraint("amount_minor >= 0", name="amount_not_negative"),
        Index("ix_holds_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    card_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id"))
    # Set at the end of the batch that created the hold (the auth row is written after the hold).
    auth_id: Mapped[int | None] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="active")
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    captured_minor: Mapped[int | None] = mapped_column(BigInteger)


class JournalEntry(Base):
    __tablename__ = "journal_entries"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    reference: Mapped[str] = mapped_column(String(200), default="")
    auth_id: Mapped[int | None] = mapped_column(BigInteger)
    # An advice or completion the network guaranteed: it may take an account below zero.
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Posting(Base):
    __tablename__ = "postings"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))


class TerminalBatch(Base):
    """A terminal's closed batch: its end-of-day totals (0500) beside ours, and whether they agreed."""

    __tablename__ = "terminal_batches"
    __table_args__ = (CheckConstraint("rc IN ('00', '95')", name="rc"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # The 0500's idempotency key: a retransmitted reconciliation gets the first answer back.
    idem_key: Mapped[str] = mapped_column(String(255), unique=True)
    terminal_id: Mapped[str] = mapped_column(String(16), index=True)
    batch_number: Mapped[str] = mapped_column(String(6), default="")
    currency: Mapped[str] = mapped_column(String(3))
    credits_count: Mapped[int] = mapped_column(Integer)
    credits_minor: Mapped[int] = mapped_column(BigInteger)
    debits_count: Mapped[int] = mapped_column(Integer)
    debits_minor: Mapped[int] = mapped_column(BigInteger)
    host_credits_count: Mapped[int] = mapped_column(Integer)
    host_credits_minor: Mapped[int] = mapped_column(BigInteger)
    host_debits_count: Mapped[int] = mapped_column(Integer)
    host_debits_minor: Mapped[int] = mapped_column(BigInteger)
    rc: Mapped[str] = mapped_column(String(2))
    closed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Auth(Base):
    __tablename__ = "auths"
    __table_args__ = (
        Index("ix_auths_terminal_id_batch_id", "terminal_id", "batch_id"),
        # Clearing matches a presentment to its authorization by approval code (then RRN, card, amount).
        Index("ix_auths_auth_code", "auth_code"),
        # Refunds, completions and reversals of one original are summed by it (only those rows carry one).
        Index(
            "ix_auths_original_auth_id", "original_auth_id",
            postgresql_where=text("original_auth_id IS NOT NULL"), sqlite_where=text("original_auth_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    idem_key: Mapped[str] = mapped_column(String(255), unique=True)
    # How later messages name this one (DE 90): acquirer, terminal, STAN and message class.
    ref: Mapped[str] = mapped_column(String(255), index=True)
    op: Mapped[str] = mapped_column(String(16))
    # Wider than their ISO 8583 fields: the answer to a malformed request is recorded, not refused.
    mti: Mapped[str] = mapped_column(String(8))
    terminal_id: Mapped[str] = mapped_column(String(16), default="")
    stan: Mapped[str] = mapped_column(String(12), default="")
    rrn: Mapped[str] = mapped_column(String(24), default="")
    card_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # What the store did (processor.ledger.ops.Result), and the response code answered for it.
    result: Mapped[str] = mapped_column(String(24))
    rc: Mapped[str] = mapped_column(String(2))
    approved_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    auth_code: Mapped[str | None] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(200), default="")
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("holds.id"), index=True)
    entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))
    original_auth_id: Mapped[int | None] = mapped_column(ForeignKey("auths.id"))
    reversed: Mapped[bool] = mapped_column(Boolean, default=False)
    # Balances as answered, so a repeated request gets exactly the first answer back.
    ledger_minor: Mapped[int | None] = mapped_column(BigInteger)
    available_minor: Mapped[int | None] = mapped_column(BigInteger)
    # The terminal batch this request was counted in, set when the terminal closes its batch (0500).
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("terminal_batches.id"))
    # Where the request came from, as settlement needs it: acquirer (DE 32), merchant (DE 42), MCC (DE 18)
    # and POS entry mode (DE 22, first two digits) decide who is paid and which fee applies.
    acquirer_id: Mapped[str] = mapped_column(String(11), default="", server_default="")
    merchant_id: Mapped[str] = mapped_column(String(15), default="", server_default="")
    mcc: Mapped[str] = mapped_column(String(4), default="", server_default="")
    entry_mode: Mapped[str] = mapped_column(String(2), default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Config(Base):
    __tablename__ = "config"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class CacheGeneration(Base):
    """One row (name 'caches'): a counter that triggers move with every change of what the engines cache (cards, their
    accounts' status and controls, terminals, merchants; migration 0010 lists the columns). An operation
    decided on cached rows is applied only while the counter is the one it saw (`ops.Op.seen_generation`)."""

    __tablename__ = "cache_generation"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


class PaymentToken(Base):
    """A wallet's device token (EMVCo payment token) standing for a card; its number is never stored in clear."""

    __tablename__ = "payment_tokens"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'suspended', 'deleted')", name="status"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"), index=True)
    # HSM keyed fingerprint of the token number: the engine finds the token by it in one indexed read.
    token_fingerprint: Mapped[str] = mapped_column(String(128), unique=True)
    fingerprint_version: Mapped[int] = mapped_column(Integer, default=1)
    sealed_token: Mapped[str] = mapped_column(Text)
    data_key_version: Mapped[int] = mapped_column(Integer, default=1)
    token_last4: Mapped[str] = mapped_column(String(4))
    token_bin: Mapped[str] = mapped_column(String(8))
    expiry: Mapped[str] = mapped_column(String(4))
    status: Mapped[str] = mapped_column(String(16), default="active")
    requestor_id: Mapped[str] = mapped_column(String(11))
    wallet: Mapped[str] = mapped_column(String(32))
    device_id: Mapped[str] = mapped_column(String(64))
    # Domain restrictions: DE 22 first two digits; NULL MCC/merchant lists mean "any".
    allowed_entry_modes: Mapped[str] = mapped_column(String(64), default="07")
    mcc_allow: Mapped[str | None] = mapped_column(Text)
    merchant_allow: Mapped[str | None] = mapped_column(Text)
    # Highest ATC seen in a verified token cryptogram (the token has its own chip key, hence its own counter).
    last_atc: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class TokenEvent(Base):
    """A payment token's lifecycle: provisioned, suspended, resumed, deleted, repointed."""

    __tablename__ = "token_events"
    __table_args__ = (
        CheckConstraint(
            "event IN ('provisioned', 'suspended', 'resumed', 'deleted', 'repointed')", name="event"
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("payment_tokens.id"), index=True)
    event: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


cardholders = Cardholder.__table__
accounts = Account.__table__
cards = Card.__table__
merchants = Merchant.__table__
terminals = Terminal.__table__
holds = Hold.__table__
journal_entries = JournalEntry.__table__
postings = Posting.__table__
auths = Auth.__table__
terminal_batches = TerminalBatch.__table__
config = Config.__table__
payment_tokens = PaymentToken.__table__
token_events = TokenEvent.__table__
cache_generation = CacheGeneration.__table__
