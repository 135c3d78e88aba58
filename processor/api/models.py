"""Tables of the money app: sign-in credentials and tokens, idempotency records, conversations and payments."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from processor.ledger.models import Base, Id, UtcDateTime, utcnow


class Credential(Base):
    """A cardholder's app password, as an argon2id hash."""

    __tablename__ = "app_credentials"

    cardholder_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Operator(Base):
    """An operator's API key: only the SHA-256 of the (high-entropy, random) key is kept."""

    __tablename__ = "app_operators"
    __table_args__ = (CheckConstraint("status IN ('active', 'revoked')", name="status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Token(Base):
    """A bearer token (access or refresh) by its SHA-256; the refresh tokens of one sign-in share a family."""

    __tablename__ = "app_tokens"
    __table_args__ = (
        CheckConstraint("kind IN ('access', 'refresh')", name="kind"),
        Index("ix_app_tokens_family", "family"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(8))
    cardholder_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"), index=True)
    family: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    # A refresh token is used once: using it again means it was stolen, and revokes its whole family.
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class SignInThrottle(Base):
    """Failed sign-ins per handle and per client address, and until when further tries are refused."""

    __tablename__ = "app_sign_in_throttle"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_failure_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class IdempotencyRecord(Base):
    """The first answer to a write, by who sent it and its Idempotency-Key."""

    __tablename__ = "app_idempotency"
    __table_args__ = (
        UniqueConstraint("principal", "key"),
        CheckConstraint("state IN ('pending', 'done')", name="state"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    principal: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    # SHA-256 of method, path and body (secret fields such as PINs left out): a key reused for another request is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(8))
    status_code: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Conversation(Base):
    """Two cardholders' one thread; `low_id` < `high_id` so a pair has exactly one."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("low_id", "high_id"),
        CheckConstraint("low_id < high_id", name="ordered_pair"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    low_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"))
    high_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ConversationItem(Base):
    """A text message, a payment or a payment request in a thread, in the order of their ids."""

    __tablename__ = "conversation_items"
    __table_args__ = (
        CheckConstraint("kind IN ('message', 'payment', 'request')", name="kind"),
        Index("ix_conversation_items_conversation_id_id", "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    kind: Mapped[str] = mapped_column(String(8))
    sender_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"))
    text: Mapped[str] = mapped_column(String(1000), default="")
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))
    request_id: Mapped[int | None] = mapped_column(ForeignKey("payment_requests.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class PaymentRequest(Base):
    """A request for money from one cardholder to another: open until paid, declined, cancelled or expired."""

    __tablename__ = "payment_requests"
    __table_args__ = (
        CheckConstraint("status IN ('open', 'paid', 'declined', 'cancelled', 'expired')", name="status"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        Index("ix_payment_requests_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    requester_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"))
    payer_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    note: Mapped[str] = mapped_column(String(280), default="")
    status: Mapped[str] = mapped_column(String(16), default="open")
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    # The payment (conversation item) that paid it.
    payment_item_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class P2pDaily(Base):
    """What an account has sent to other people on one UTC day: the per-day limits are checked against it."""

    __tablename__ = "p2p_daily"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    sent_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    sent_count: Mapped[int] = mapped_column(Integer, default=0)


credentials = Credential.__table__
operators = Operator.__table__
tokens = Token.__table__
sign_in_throttle = SignInThrottle.__table__
idempotency = IdempotencyRecord.__table__
conversations = Conversation.__table__
conversation_items = ConversationItem.__table__
payment_requests = PaymentRequest.__table__
p2p_daily = P2pDaily.__table__
