"""The outbox's write side: events written in the same transaction as the change they describe.

Writers (the hot path's batches, the card lifecycle, the money app, savings) call `write_events(conn, [...])`
inside their own transaction, so an event exists exactly when its change committed; `processor.events`
reads them back for the feed and the other consumers.

A consumer's position is one number, the last event id it handed on; readers (`processor.events.read_after`)
never hand out an id while a smaller one may still commit:
- SQLite has one writer at a time, so ids are given and committed in the same order.
- PostgreSQL writers do not wait for each other. A writer makes sure its transaction has an xid, takes its
  ids from the sequence, then inserts the events in a subtransaction (a savepoint, released at once): the
  rows' xmin is then an xid assigned after the ids were taken, above the xid of every transaction that
  could hold a smaller id. A reader hands out an event when every id below it is settled: the ids between
  its position and the event are all visible, or no transaction older than the event's xmin is still
  running (its snapshot's xmin), so a missing smaller id was rolled back and never appears.

Card traffic: `card_events` turns the auths rows a hot-path batch answered into one event each for the
cardholder, `card.authorization` (approved or declined, merchant and amount) and `card.reversal`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import CheckConstraint, Connection, ForeignKey, Index, String, Text, bindparam, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from processor.ledger.rows import insert_rows
from processor.ledger.models import Base, Id, UtcDateTime, accounts, cards, merchants, terminals, utcnow

class Event(Base):
    """One event. Its id is the event id: on both databases ids become visible in increasing order."""

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint("audience IN ('cardholder', 'operator')", name="audience"),
        CheckConstraint("(audience = 'cardholder') = (cardholder_id IS NOT NULL)", name="cardholder_events_have_one"),
        Index("ix_events_cardholder_id_id", "cardholder_id", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    audience: Mapped[str] = mapped_column(String(16))
    cardholder_id: Mapped[int | None] = mapped_column(ForeignKey("cardholders.id"))
    type: Mapped[str] = mapped_column(String(48))
    # The event's `data` object as JSON text (the envelope is built when the event is read).
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class EventConsumer(Base):
    """How far a consumer (the MQTT publisher, a webhook sender) has handed events on, by event id."""

    __tablename__ = "event_consumers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Id, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)



events = Event.__table__
event_consumers = EventConsumer.__table__

_INSERT_EVENTS = insert(events)  # built once: the hot path's driver compiles each statement once
SCHEMA_VERSION = 1
READ_LIMIT_MAX = 1000
MAX_DATA_CHARS = 8000

# Event types, with the cardholder who gets each one.
EVENT_TYPES = frozenset(
    {
        "card.authorization",  # the card's holder: approved or declined, merchant and amount
        "card.reversal",  # the card's holder: an authorization undone
        "card.status",  # the card's holder: frozen, unfrozen, lost (and replaced), stolen, closed
        "payment.sent",  # the payer (data.request_id names the request it paid, if any)
        "payment.received",  # the payee
        "request.created",  # requester and payer
        "request.declined",
        "request.cancelled",
        "request.expired",
        "message.received",  # the other person in the conversation
        "interest.posted",  # the savings account's holder
        "transfer.completed",  # between a cardholder's own accounts
    }
)

def cardholder_event(cardholder_id: int, type_: str, data: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The row of one event for a cardholder's feed, to pass to `write_events`."""
    return _row("cardholder", cardholder_id, type_, data, now)


def operator_event(type_: str, data: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The row of one event for operators (no cardholder)."""
    return _row("operator", None, type_, data, now)


# One encoder for every event: json.dumps with options builds a new encoder on each call.
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _row(audience: str, cardholder_id: int | None, type_: str, data: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    if audience == "cardholder" and type_ not in EVENT_TYPES:
        raise ValueError(f"unknown cardholder event type {type_!r}")
    text = _encode(data)
    if len(text) > MAX_DATA_CHARS:
        raise ValueError(f"event {type_} data is {len(text)} characters, more than {MAX_DATA_CHARS}")
    return {"audience": audience, "cardholder_id": cardholder_id, "type": type_, "data": text, "created_at": now}


# The WHERE's uncorrelated subquery runs once, before the first row's nextval: the xid comes first.
_PG_IDS = "SELECT nextval(pg_get_serial_sequence('events', 'id')) FROM generate_series(1, {n:d}) WHERE (SELECT pg_current_xact_id() IS NOT NULL)"
_PG_SAVEPOINT = "SAVEPOINT outbox_events"
_PG_RELEASE = "RELEASE SAVEPOINT outbox_events"


def write_events(conn: Connection, rows: Sequence[dict[str, Any]], *, release: bool = True) -> None:
    """Insert events inside the caller's transaction (see the module's note for PostgreSQL).

    With `release` False the PostgreSQL subtransaction stays open (it commits with the transaction): for a
    caller whose remaining statements may run inside it, one round trip fewer."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        insert_rows(conn, events, rows)
        return
    # The xid first (a transaction without one would not show as running while it holds ids), then the ids,
    # then the rows under a subtransaction whose xid is newer than both.
    ids = conn.exec_driver_sql(_PG_IDS.format(n=len(rows))).scalars().all()
    if len(ids) != len(rows):
        raise RuntimeError(f"{len(rows)} event ids asked for, {len(ids)} given")
    conn.exec_driver_sql(_PG_SAVEPOINT)
    conn.execute(_INSERT_EVENTS, [row | {"id": event_id} for row, event_id in zip(rows, ids, strict=True)])
    if release:
        conn.exec_driver_sql(_PG_RELEASE)


# ------------------------------------------------------------------ card traffic

APPROVALS = ("00", "10")
AUTHORIZATION_OPS = frozenset({"hold", "debit", "credit", "increment", "decline"})
REVERSAL_OPS = frozenset({"reverse"})

_HOLDERS = select(accounts.c.id, accounts.c.cardholder_id).where(accounts.c.id.in_(bindparam("ids", expanding=True)))
_LAST4 = select(cards.c.id, cards.c.last4).where(cards.c.id.in_(bindparam("ids", expanding=True)))
_MERCHANTS = (
    select(terminals.c.terminal_id, merchants.c.name, merchants.c.location, merchants.c.mcc)
    .join(merchants, merchants.c.id == terminals.c.merchant_id)
    .where(terminals.c.terminal_id.in_(bindparam("ids", expanding=True)))
)


class _Memo:
    """What never changes (an account's holder, a card's last digits) kept per process; merchants for a minute.

    The hot path then reads nothing for most batches: only ids it has not met yet.
    """

    MAX_ENTRIES = 100_000
    MERCHANT_TTL_S = 60.0

    def __init__(self) -> None:
        self.holders: dict[int, int | None] = {}
        self.last4: dict[int, str] = {}
        self.shops: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def _bounded(self) -> None:
        for table in (self.holders, self.last4, self.shops):
            if len(table) > self.MAX_ENTRIES:
                table.clear()

    def fill(self, conn: Connection, account_ids: set[int], card_ids: set[int], terminal_ids: set[str]) -> None:
        self._bounded()
        missing = sorted(account_ids - self.holders.keys())
        if missing:
            self.holders.update({r.id: r.cardholder_id for r in conn.execute(_HOLDERS, {"ids": missing})})
        missing_cards = sorted(card_ids - self.last4.keys())
        if missing_cards:
            self.last4.update({r.id: r.last4 for r in conn.execute(_LAST4, {"ids": missing_cards})})
        now = time.monotonic()
        stale = sorted(t for t in terminal_ids if t not in self.shops or now - self.shops[t][0] > self.MERCHANT_TTL_S)
        if stale:
            found = {t: {"name": n, "location": loc, "mcc": m, "terminal_id": t}
                     for t, n, loc, m in conn.execute(_MERCHANTS, {"ids": stale})}
            self.shops.update({t: (now, found.get(t)) for t in stale})


_memos: dict[str, _Memo] = {}  # one per database this process writes to


def card_events(conn: Connection, answered: Sequence[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """Event rows for the auths rows of one batch: the cardholder's when the account has a holder, else
    one `authorization.unmatched` for operators (an unknown card, an internal account), so that
    operators hear of every decision."""
    mine = [row for row in answered if row["op"] in AUTHORIZATION_OPS | REVERSAL_OPS]
    if not mine:
        return []
    database = conn.engine.url.render_as_string(hide_password=True)
    memo = _memos.get(database)
    if memo is None:
        memo = _memos[database] = _Memo()
    memo.fill(conn, {r["account_id"] for r in mine if r.get("account_id") is not None},
              {r["card_id"] for r in mine if r.get("card_id") is not None},
              {r["terminal_id"] for r in mine if r.get("terminal_id")})
    holders, last4, shops = memo.holders, memo.last4, memo.shops
    rows = []
    for r in mine:
        cardholder_id = holders.get(r["account_id"]) if r.get("account_id") is not None else None
        data = {
            "card_id": r.get("card_id"),
            "last4": last4.get(r.get("card_id")),
            "account_id": r.get("account_id"),
            "amount_minor": r["amount_minor"],
            "approved_minor": r["approved_minor"],
            "currency": r["currency"],
            "merchant": shops.get(r.get("terminal_id") or "", (0.0, None))[1],
        }
        reversal = r["op"] in REVERSAL_OPS
        if not reversal:
            approved = r["rc"] in APPROVALS
            data |= {
                "approved": approved,
                "kind": {"hold": "authorization", "debit": "purchase", "credit": "refund", "increment": "incremental"}.get(r["op"], "declined"),
                "response_code": r["rc"],
                "decline_reason": None if approved else r["reason"],
            }
        if cardholder_id is None:
            # Nobody's feed (an unknown card, an internal account): the operators still see the decision.
            rows.append(operator_event("authorization.unmatched", {**data, "terminal_id": r.get("terminal_id"),
                                                                   "reversal": reversal}, now))
        else:
            rows.append(cardholder_event(cardholder_id, "card.reversal" if reversal else "card.authorization", data, now))
    return rows
