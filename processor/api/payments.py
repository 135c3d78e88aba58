"""Money between people and between a person's own accounts: instant, double entry, group-committed.

`TransferDesk.submit` queues a transfer; a writer takes what is waiting (up to `max_batch`) and applies it in
ONE store transaction, then answers: each payment is durable before its answer, and one commit serves many
payments. Each transfer runs under a savepoint, so one refused payment leaves its neighbours alone. Its
Idempotency-Key record and its feed events are written in the same transaction as the money.

A batch reads the balances and per-day totals of every account it touches once, while it alone may change
them (SQLite: the write lock taken at BEGIN IMMEDIATE; PostgreSQL: the accounts locked FOR UPDATE in id
order, as the authorization hot path does), decides each transfer in order in memory, and writes the net
change of each account and each day's totals in one statement each. So no interleaving of requests,
writers or processes can overdraw an account or pass a limit, and a payment costs a few rows, not a few
statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from processor.issuing import config
from processor.api import idempotency as idem
from processor.api.errors import ApiError
from processor.api.models import conversation_items, conversations, p2p_daily, payment_requests
from processor.api.security import live_access_tokens
from processor.api.threads import checking_account, request_json
from processor.events.outbox import cardholder_event, write_events
from processor.ledger.apply import Conflict, LedgerBug
from processor.ledger.models import accounts, cardholders, journal_entries, postings, utcnow
from processor.ledger.rows import insert_rows, rows_by_pairs
from processor.ledger.errors import StoreBusy, StoreClosed

log = logging.getLogger("processor.api.payments")

DAILY_LIMIT_CONFIG = "p2p.daily_limit_minor"
DAILY_COUNT_CONFIG = "p2p.daily_count"
DEFAULT_DAILY_LIMIT_MINOR = 2_500_00
DEFAULT_DAILY_COUNT = 100

a, it, rq, pd, ch = accounts.c, conversation_items.c, payment_requests.c, p2p_daily.c, cardholders.c

_BALANCES = select(a.id, a.status, a.ledger_minor, a.held_minor).where(a.id.in_(bindparam("ids", expanding=True))).order_by(a.id)
_LOCKED_BALANCES = _BALANCES.with_for_update()
_MOVE = (
    update(accounts)
    .where(a.id == bindparam("aid"), a.ledger_minor == bindparam("was"))
    .values(ledger_minor=a.ledger_minor + bindparam("delta"))
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-day limits on what one account sends to other people (UTC days)."""

    daily_minor: int = DEFAULT_DAILY_LIMIT_MINOR
    daily_count: int = DEFAULT_DAILY_COUNT


@dataclass(frozen=True, slots=True)
class Transfer:
    """One queued transfer: to a person by handle (or paying a request), or between the caller's own accounts."""

    kind: str  # "p2p" | "own"
    payer_id: int
    principal: str
    idem_key: str
    rhash: str
    amount_minor: int = 0
    currency: str = ""
    note: str = ""
    payee_handle: str | None = None
    request_id: int | None = None
    from_account_id: int | None = None
    to_account_id: int | None = None
    # The caller's access token (its SHA-256): checked live in the batch's own transaction, so a sign-out or
    # revocation committed by any process refuses the payment at once.
    token_hash: str | None = None


def check_amount(amount_minor: int, currency: str) -> None:
    if amount_minor <= 0:
        raise ApiError("invalid_request", "amount_minor must be a positive integer", details={"fields": ["amount_minor"]})
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()):
        raise ApiError("invalid_request", "currency must be an ISO 4217 code such as EUR", details={"fields": ["currency"]})


# ------------------------------------------------------------------ the batch (inside one transaction)

_SENT = select(pd.account_id, pd.sent_minor, pd.sent_count).where(pd.day == bindparam("day"), pd.account_id.in_(bindparam("ids", expanding=True)))


def _sent_upsert(insert_: Any) -> Any:
    stmt = insert_(p2p_daily).values(account_id=bindparam("aid"), day=bindparam("day"), sent_minor=bindparam("sent"), sent_count=bindparam("cnt"))
    return stmt.on_conflict_do_update(index_elements=[pd.account_id, pd.day], set_={"sent_minor": stmt.excluded.sent_minor, "sent_count": stmt.excluded.sent_count})


_SENT_UPSERT = {"sqlite": _sent_upsert(sqlite_insert), "postgresql": _sent_upsert(pg_insert)}


def new_ids(conn: Connection, table: str, count: int) -> list[int]:
    """`count` fresh ids for `table`'s integer key, taken before one multi-row INSERT that names them.

    (An INSERT ... RETURNING that must give ids in row order runs one statement per row on SQLite.) SQLite:
    this transaction holds the write lock, so the ids after the highest are free. PostgreSQL: the table's sequence.
    """
    if conn.dialect.name == "postgresql":
        sql = f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, {count:d})"
        return list(conn.exec_driver_sql(sql).scalars())
    top = conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {table}").scalar_one()
    return list(range(top + 1, top + 1 + count))
_PAY_REQUEST = (
    update(payment_requests)
    .where(rq.id == bindparam("rid"), rq.status == "open")
    .values(status="paid", payment_item_id=bindparam("iid"), closed_at=bindparam("at"))
)
_REQUESTS = select(rq).where(rq.id.in_(bindparam("ids", expanding=True)))
_CARDHOLDERS = select(ch.id, ch.handle).where(or_(ch.handle.in_(bindparam("handles", expanding=True)), ch.id.in_(bindparam("ids", expanding=True))))
_CHECKINGS = (
    select(a.id, a.cardholder_id, a.currency, a.status)
    .where(a.cardholder_id.in_(bindparam("ids", expanding=True)), a.kind == "checking", a.status != "closed")
    .order_by(a.id)
)
_ACCOUNTS = select(a.id, a.cardholder_id, a.currency, a.status, a.kind).where(a.id.in_(bindparam("ids", expanding=True)))
REVOKED = ApiError("unauthenticated", "unknown, expired or revoked token; refresh or sign in again",
                   headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


@dataclass(slots=True)
class _Moved:
    """A transfer whose money moved; its rows are written together at the end of the batch."""

    t: Transfer
    source: int
    target: int
    amount_minor: int
    currency: str
    note: str
    payee_id: int | None
    source_after: Any
    target_after: Any = None
    entry_id: int = 0
    item_id: int = 0
    conversation_id: int = 0


@dataclass(frozen=True, slots=True)
class _Replay:
    """The same key twice in one batch: the second gets the first's answer."""

    first: int  # index of the first in the batch


@dataclass(frozen=True, slots=True)
class _SamePayment:
    """A request paid twice in one batch: the second answers with the first's payment."""

    moved: int  # index in the batch's moved transfers


@dataclass(slots=True)
class _Balance:
    """An account as this batch sees it: read once under the batch's lock, changed in memory, written at the end."""

    status: str
    ledger_minor: int
    held_minor: int
    read_ledger_minor: int


@dataclass(slots=True)
class _Batch:
    """What one batch knows after its few look-ups: the people, their accounts and the requests it names."""

    now: dt.datetime
    limits: Limits
    handles: dict[str, int]
    names: dict[int, str]
    checking: dict[tuple[int, str], Any]
    accounts: dict[int, Any]
    requests: dict[int, Any]
    balances: dict[int, _Balance]
    sent: dict[int, list[int]]  # payer account id -> [sent_minor, sent_count] today, as read
    sent_changed: set[int]
    events: list[dict[str, Any]]
    paying: dict[int, int]  # request id -> index in `moved` of the payment paying it in this batch

    def checking_of(self, cardholder_id: int, currency: str) -> Any:
        return self.checking.get((cardholder_id, currency))


def _load(conn: Connection, batch: Sequence[Transfer], now: dt.datetime, limits: Limits) -> _Batch:
    request_ids = sorted({t.request_id for t in batch if t.request_id is not None})
    requests = {r.id: r for r in conn.execute(_REQUESTS, {"ids": request_ids})} if request_ids else {}
    handles = sorted({t.payee_handle for t in batch if t.payee_handle})
    ids = {t.payer_id for t in batch} | {r.requester_id for r in requests.values()} | {r.payer_id for r in requests.values()}
    names: dict[int, str] = {}
    by_handle: dict[str, int] = {}
    for row in conn.execute(_CARDHOLDERS, {"handles": handles, "ids": sorted(ids)}):
        names[row.id] = row.handle
        by_handle[row.handle] = row.id
    people = sorted(set(names))
    checking: dict[tuple[int, str], Any] = {}
    for row in conn.execute(_CHECKINGS, {"ids": people}) if people else ():
        checking.setdefault((row.cardholder_id, row.currency), row)
    own_ids = sorted({x for t in batch if t.kind == "own" for x in (t.from_account_id, t.to_account_id) if x is not None})
    own = {r.id: r for r in conn.execute(_ACCOUNTS, {"ids": own_ids})} if own_ids else {}
    touched = sorted({r.id for r in checking.values()} | {r.id for r in own.values()})
    balances: dict[int, _Balance] = {}
    if touched:
        # PostgreSQL: lock every account the batch may touch in id order (parallel batches queue instead of
        # deadlocking) and read them under the lock. SQLite: this transaction holds the write lock already.
        query = _LOCKED_BALANCES if conn.dialect.name == "postgresql" else _BALANCES
        balances = {r.id: _Balance(r.status, r.ledger_minor, r.held_minor, r.ledger_minor) for r in conn.execute(query, {"ids": touched})}
    payer_ids = {t.payer_id for t in batch if t.kind == "p2p"}
    payers = sorted({row.id for (cid, _), row in checking.items() if cid in payer_ids})
    sent = {r.account_id: [r.sent_minor, r.sent_count] for r in conn.execute(_SENT, {"day": now.date(), "ids": payers})} if payers else {}
    return _Batch(now, limits, by_handle, names, checking, own, requests, balances, sent, set(), [], {})


def apply_transfers(conn: Connection, batch: Sequence[Transfer], limits: Limits) -> list[idem.Answer]:
    """Apply `batch` in order inside the caller's transaction; the answers hold once it commits."""
    now = utcnow()
    hashes = sorted({t.token_hash for t in batch if t.token_hash is not None})
    live = live_access_tokens(conn, hashes, now) if hashes else set()
    stored = idem.stored_many(conn, list({(t.principal, t.idem_key) for t in batch}))
    b = _load(conn, batch, now, limits)
    answers: list[idem.Answer | _Moved | _Replay | _SamePayment] = []
    fresh: dict[tuple[str, str], tuple[str, int]] = {}
    moved: list[_Moved] = []
    for t in batch:
        k = (t.principal, t.idem_key)
        if t.token_hash is not None and t.token_hash not in live:
            answers.append(idem.Answer(REVOKED.status, REVOKED.body()))  # not recorded: the key stays unused
            continue
        try:
            if k in fresh:
                rhash, first = fresh[k]
                if rhash != t.rhash:
                    raise ApiError("idempotency_key_reused", "this Idempotency-Key was already used for a different request")
                answers.append(_Replay(first))
                continue
            if k in stored:
                answers.append(idem.answer_from_row(stored[k], t.rhash))
                continue
        except ApiError as err:
            answers.append(idem.Answer(err.status, err.body()))
            continue
        fresh[k] = (t.rhash, len(answers))
        try:
            result = _own(conn, b, t) if t.kind == "own" else _p2p(conn, b, t, moved)
        except ApiError as err:
            result = idem.Answer(err.status, err.body())
        if isinstance(result, _Moved):
            moved.append(result)
        answers.append(result)
    _write_balances(conn, b)
    _write_moved(conn, b, moved)
    final: list[idem.Answer] = []
    records = []
    for index, answer in enumerate(answers):
        if isinstance(answer, _Replay):
            first = final[answer.first]
            final.append(idem.Answer(first.status, first.body, replayed=True))
            continue
        if isinstance(answer, _SamePayment):
            final.append(idem.Answer(200, _payment_body(b, moved[answer.moved], with_balance=False)))
        elif isinstance(answer, _Moved):
            final.append(_moved_answer(b, answer))
        else:
            final.append(answer)
        t = batch[index]
        if fresh.get((t.principal, t.idem_key), ("", -1))[1] == index:  # answered here, not read back
            record = idem.record_row(t.principal, t.idem_key, t.rhash, final[-1], now)
            records.append(record)
            final[-1] = idem.Answer(final[-1].status, final[-1].body, encoded=record["body"])
    if records:
        insert_rows(conn, idem.idempotency, records)
    write_events(conn, b.events)
    return final


def _check_limits(b: _Batch, account_id: int, amount_minor: int) -> list[int]:
    """The payer's totals today, when `amount_minor` more stays within the per-day limits; else the refusal."""
    limit_minor, limit_count = b.limits.daily_minor, b.limits.daily_count
    if amount_minor > limit_minor:
        raise ApiError("daily_limit_exceeded", f"the per-day limit for payments to people is {limit_minor} minor units",
                       details={"limit_minor": limit_minor})
    sent = b.sent.setdefault(account_id, [0, 0])
    if sent[1] + 1 > limit_count:
        raise ApiError("daily_count_exceeded", f"at most {limit_count} payments to people a day",
                       details={"limit_count": limit_count, "sent_count": sent[1]})
    if sent[0] + amount_minor > limit_minor:
        raise ApiError("daily_limit_exceeded", f"the per-day limit for payments to people is {limit_minor} minor units",
                       details={"limit_minor": limit_minor, "sent_minor": sent[0]})
    return sent


def _take(b: _Batch, account_id: int, amount_minor: int) -> tuple[int, int]:
    """Take `amount_minor` from an open account with enough available; its (ledger, held) afterwards."""
    bal = b.balances[account_id]
    if bal.status != "open":
        raise ApiError("account_not_open", f"your account {account_id} is {bal.status}: it can neither send nor receive")
    if bal.ledger_minor - bal.held_minor < amount_minor:
        raise ApiError("insufficient_funds", f"account {account_id} does not have {amount_minor} minor units available")
    bal.ledger_minor -= amount_minor
    return bal.ledger_minor, bal.held_minor


def _give(b: _Batch, account_id: int, amount_minor: int) -> tuple[int, int]:
    bal = b.balances[account_id]
    if bal.status != "open":
        raise LedgerBug(f"account {account_id} is {bal.status} but was checked open")
    bal.ledger_minor += amount_minor
    return bal.ledger_minor, bal.held_minor


def _write_balances(conn: Connection, b: _Batch) -> None:
    """Each changed account's net change, and each payer's totals today, one statement each for the batch."""
    moves = [{"aid": aid, "was": bal.read_ledger_minor, "delta": bal.ledger_minor - bal.read_ledger_minor}
             for aid, bal in sorted(b.balances.items()) if bal.ledger_minor != bal.read_ledger_minor]
    if sum(m["delta"] for m in moves) != 0:
        raise LedgerBug("the batch's account changes do not sum to zero")
    if moves:
        changed = conn.execute(_MOVE, moves).rowcount
        if conn.dialect.supports_sane_multi_rowcount and changed != len(moves):
            # Nobody else may change these accounts during the batch (write lock / row locks): retry the batch.
            raise Conflict("an account changed during the batch")
    if b.sent_changed:
        day = b.now.date()
        rows = [{"aid": aid, "day": day, "sent": b.sent[aid][0], "cnt": b.sent[aid][1]} for aid in sorted(b.sent_changed)]
        conn.execute(_SENT_UPSERT["postgresql" if conn.dialect.name == "postgresql" else "sqlite"], rows)


def _p2p(conn: Connection, b: _Batch, t: Transfer, moved: list[_Moved]) -> idem.Answer | _Moved | _SamePayment:
    request = None
    amount_minor, currency, note = t.amount_minor, t.currency, t.note
    if t.request_id is not None:
        request = b.requests.get(t.request_id)
        if request is None or t.payer_id not in (request.payer_id, request.requester_id):
            raise ApiError("not_found", f"payment request {t.request_id} not found")
        if request.payer_id != t.payer_id:
            raise ApiError("forbidden", "only the request's payer can pay it")
        if request.id in b.paying:
            return _SamePayment(b.paying[request.id])
        if request.status == "paid":
            return _paid_already(conn, b, request)
        if request.status == "open" and request.expires_at <= b.now:
            return _expired(conn, b, request)
        if request.status != "open":
            raise ApiError("request_not_open", f"payment request {request.id} is {request.status}")
        amount_minor, currency, note, payee_id = request.amount_minor, request.currency, request.note, request.requester_id
    else:
        check_amount(amount_minor, currency)
        found = b.handles.get(t.payee_handle or "")
        if found is None:
            raise ApiError("recipient_not_found", f"no cardholder with handle @{t.payee_handle}")
        payee_id = found
    if payee_id == t.payer_id:
        raise ApiError("cannot_pay_yourself", "payer and payee are the same cardholder")
    payer = b.checking_of(t.payer_id, currency)
    if payer is None:
        raise ApiError("currency_mismatch", f"you have no account in {currency}")
    payee = b.checking_of(payee_id, currency)
    if payee is None:
        raise ApiError("recipient_not_found", f"the recipient has no account in {currency}")
    if (status := b.balances[payer.id].status) != "open":
        raise ApiError("account_not_open", f"your account {payer.id} is {status}: it can neither send nor receive")
    if b.balances[payee.id].status != "open":
        raise ApiError("recipient_cannot_receive", "the recipient's account cannot receive payments now")
    sent = _check_limits(b, payer.id, amount_minor)
    after = _take(b, payer.id, amount_minor)
    _give(b, payee.id, amount_minor)
    sent[0] += amount_minor
    sent[1] += 1
    b.sent_changed.add(payer.id)
    if request is not None:
        b.paying[request.id] = len(moved)
    return _Moved(t, payer.id, payee.id, amount_minor, currency, note, payee_id, after)


def _own(conn: Connection, b: _Batch, t: Transfer) -> _Moved:
    if t.amount_minor <= 0:
        raise ApiError("invalid_request", "amount_minor must be a positive integer", details={"fields": ["amount_minor"]})
    rows = {}
    for which, account_id in (("from_account_id", t.from_account_id), ("to_account_id", t.to_account_id)):
        row = b.accounts.get(account_id or 0)
        if row is None or row.cardholder_id != t.payer_id:
            raise ApiError("not_found", f"account {account_id} not found", details={"fields": [which]})
        rows[which] = row
    source, target = rows["from_account_id"], rows["to_account_id"]
    if source.id == target.id:
        raise ApiError("invalid_request", "from and to are the same account", details={"fields": ["to_account_id"]})
    if source.currency != target.currency:
        raise ApiError("currency_mismatch", f"account {source.id} is in {source.currency}, account {target.id} in {target.currency}")
    for row in (source, target):
        if (status := b.balances[row.id].status) != "open":
            raise ApiError("account_not_open", f"account {row.id} is {status}")
    after = _take(b, source.id, t.amount_minor)
    target_after = _give(b, target.id, t.amount_minor)
    return _Moved(t, source.id, target.id, t.amount_minor, source.currency, t.note, None, after, target_after)


def _write_moved(conn: Connection, b: _Batch, moved: list[_Moved]) -> None:
    """One multi-row INSERT each for the batch's journal entries, postings and conversation items."""
    if not moved:
        return
    entry_ids = new_ids(conn, "journal_entries", len(moved))
    insert_rows(conn, journal_entries, [
        {"id": entry_id, "kind": "p2p" if m.t.kind == "p2p" else "transfer",
         "reference": f"{m.t.kind} {m.t.principal} {m.t.idem_key}"[:200], "auth_id": None, "forced": False, "created_at": b.now}
        for m, entry_id in zip(moved, entry_ids, strict=True)
    ])
    lines = []
    for m, entry_id in zip(moved, entry_ids, strict=True):
        m.entry_id = entry_id
        lines += [{"entry_id": entry_id, "account_id": m.source, "amount_minor": -m.amount_minor, "currency": m.currency},
                  {"entry_id": entry_id, "account_id": m.target, "amount_minor": m.amount_minor, "currency": m.currency}]
    if sum(line["amount_minor"] for line in lines) != 0:
        raise LedgerBug("transfer postings do not balance")
    insert_rows(conn, postings, lines)
    payments = [m for m in moved if m.t.kind == "p2p"]
    if not payments:
        return
    pairs = {(min(m.t.payer_id, m.payee_id), max(m.t.payer_id, m.payee_id)) for m in payments if m.payee_id is not None}
    conversations = conversations_of(conn, pairs, b.now)
    item_ids = new_ids(conn, "conversation_items", len(payments))
    insert_rows(conn, conversation_items, [
        {"id": item_id, "conversation_id": conversations[(min(m.t.payer_id, m.payee_id), max(m.t.payer_id, m.payee_id))],
         "kind": "payment", "sender_id": m.t.payer_id, "text": m.note, "amount_minor": m.amount_minor, "currency": m.currency,
         "entry_id": m.entry_id, "request_id": m.t.request_id, "created_at": b.now}
        for m, item_id in zip(payments, item_ids, strict=True)
    ])
    for m, item_id in zip(payments, item_ids, strict=True):
        m.item_id = item_id
        assert m.payee_id is not None
        m.conversation_id = conversations[(min(m.t.payer_id, m.payee_id), max(m.t.payer_id, m.payee_id))]
        if m.t.request_id is not None:
            if conn.execute(_PAY_REQUEST, {"rid": m.t.request_id, "iid": item_id, "at": b.now}).rowcount != 1:
                raise Conflict(f"payment request {m.t.request_id} changed during the batch")


def _payment_body(b: _Batch, m: _Moved, *, with_balance: bool) -> dict[str, Any]:
    after = m.source_after
    body = {
        "id": m.item_id,
        "conversation_id": m.conversation_id,
        "from": b.names[m.t.payer_id],
        "to": b.names[m.payee_id] if m.payee_id is not None else "",
        "amount_minor": m.amount_minor,
        "currency": m.currency,
        "note": m.note,
        "request_id": m.t.request_id,
        "created_at": b.now.isoformat(),
    }
    if with_balance:
        body["balance"] = {"account_id": m.source, "ledger_minor": after[0], "available_minor": after[0] - after[1]}
    return body


def _moved_answer(b: _Batch, m: _Moved) -> idem.Answer:
    if m.t.kind == "own":
        after, target_after = m.source_after, m.target_after
        transfer = {
            "id": m.entry_id, "from_account_id": m.source, "to_account_id": m.target, "amount_minor": m.amount_minor,
            "currency": m.currency, "note": m.note, "created_at": b.now.isoformat(),
            "from_balance_minor": after[0], "to_balance_minor": target_after[0],
        }
        b.events.append(cardholder_event(m.t.payer_id, "transfer.completed", transfer, b.now))
        return idem.Answer(201, transfer)
    body = _payment_body(b, m, with_balance=True)
    event = {k: v for k, v in body.items() if k != "balance"}
    b.events.append(cardholder_event(m.t.payer_id, "payment.sent", event, b.now))
    assert m.payee_id is not None
    b.events.append(cardholder_event(m.payee_id, "payment.received", event, b.now))
    return idem.Answer(201, body)


def conversations_of(conn: Connection, pairs: set[tuple[int, int]], now: dt.datetime) -> dict[tuple[int, int], int]:
    """The conversation id of each (low, high) cardholder pair, creating the missing ones."""
    if not pairs:
        return {}
    rows = rows_by_pairs(conn, conversations, ("id", "low_id", "high_id"), ("low_id", "high_id"), sorted(pairs))
    found = {(r.low_id, r.high_id): r.id for r in rows}
    missing = sorted(pairs - set(found))
    if missing:
        ids = new_ids(conn, "conversations", len(missing))
        conn.execute(insert(conversations), [{"id": i, "low_id": lo, "high_id": hi, "created_at": now} for i, (lo, hi) in zip(ids, missing, strict=True)])
        found.update(zip(missing, ids, strict=True))
    return found


def _paid_already(conn: Connection, b: _Batch, request: Any) -> idem.Answer:
    """Paying a paid request again answers with the payment that paid it, and moves nothing."""
    item = conn.execute(select(it.id, it.conversation_id, it.text, it.created_at).where(it.id == request.payment_item_id)).one()
    return idem.Answer(200, {
        "id": item.id, "conversation_id": item.conversation_id, "from": b.names[request.payer_id],
        "to": b.names[request.requester_id], "amount_minor": request.amount_minor, "currency": request.currency,
        "note": item.text, "request_id": request.id, "created_at": item.created_at.isoformat(),
    })


def _expired(conn: Connection, b: _Batch, request: Any) -> idem.Answer:
    """An open request past its expiry: it becomes expired now (with its events) and cannot be paid."""
    conn.execute(update(payment_requests).where(rq.id == request.id, rq.status == "open").values(status="expired", closed_at=b.now))
    handles = {request.payer_id: b.names[request.payer_id], request.requester_id: b.names[request.requester_id]}
    body = request_json(request, handles) | {"status": "expired", "closed_at": b.now.isoformat()}
    b.events += [cardholder_event(who, "request.expired", body, b.now) for who in (request.requester_id, request.payer_id)]
    err = ApiError("request_expired", f"payment request {request.id} expired at {request.expires_at.isoformat()}")
    return idem.Answer(err.status, err.body())


# ------------------------------------------------------------------ the desk (group commit)


async def load_limits(store: Any) -> Limits:
    limit = await config.get(store, DAILY_LIMIT_CONFIG)
    count = await config.get(store, DAILY_COUNT_CONFIG)
    return Limits(int(limit) if limit else DEFAULT_DAILY_LIMIT_MINOR, int(count) if count else DEFAULT_DAILY_COUNT)


def _give_up(fut: asyncio.Future[idem.Answer], timeout_s: float) -> None:
    """A transfer not answered in time: its caller retries with the same key (a late commit answers that retry)."""
    if not fut.done():
        fut.set_exception(StoreBusy(f"no commit within {timeout_s}s; retry with the same Idempotency-Key"))


class TransferDesk:
    """Queues transfers and applies them in group-committed batches through the store's write path."""

    def __init__(
        self,
        store: Any,
        *,
        on_commit: Callable[[], None] | None = None,
        max_batch: int = 128,
        queue_max: int = 4096,
        writers: int = 1,
        submit_timeout_s: float = 10.0,
        limits_refresh_s: float = 5.0,
    ) -> None:
        self.store = store
        self.on_commit = on_commit or (lambda: None)
        self.max_batch = max_batch
        self.submit_timeout_s = submit_timeout_s
        self.limits_refresh_s = limits_refresh_s
        self._queue: asyncio.Queue[tuple[Transfer, asyncio.Future[idem.Answer]]] = asyncio.Queue(queue_max)
        self._writers = writers
        self._tasks: list[asyncio.Task[None]] = []
        self._limits = Limits()
        self._limits_at = 0.0
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.transfers = 0

    async def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._limits = await load_limits(self.store)
        self._limits_at = time.monotonic()
        self._tasks = [asyncio.create_task(self._loop(), name=f"transfer-desk-{n}") for n in range(self._writers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(StoreClosed("the API is stopping before the transfer was committed"))

    async def submit(self, transfer: Transfer) -> idem.Answer:
        """Apply `transfer` with its neighbours in one transaction; returns once it is committed.

        The loop is the one remembered at start, and the timeout a timer on the answer: asking asyncio for the
        running loop (as asyncio.timeout does, several times) costs a getpid() system call each time.
        """
        loop = self._event_loop
        assert loop is not None, "the transfer desk is not started"
        fut: asyncio.Future[idem.Answer] = loop.create_future()
        try:
            self._queue.put_nowait((transfer, fut))
        except asyncio.QueueFull:
            raise StoreBusy(f"{self._queue.qsize()} transfers are waiting; retry with the same Idempotency-Key") from None
        timer = loop.call_later(self.submit_timeout_s, _give_up, fut, self.submit_timeout_s)
        try:
            return await fut
        finally:
            timer.cancel()

    def reload_limits(self) -> None:
        """Read the limits again before the next batch (they changed in this process)."""
        self._limits_at = 0.0

    async def _limits_now(self) -> Limits:
        if time.monotonic() - self._limits_at > self.limits_refresh_s:
            with contextlib.suppress(Exception):
                self._limits = await load_limits(self.store)
            self._limits_at = time.monotonic()
        return self._limits

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [(t, f) for t, f in batch if not f.done()]
            if not live:
                continue
            limits = await self._limits_now()
            transfers = [t for t, _ in live]
            results: list[idem.Answer | BaseException]
            try:
                results = list(await self.store.run_write(apply_transfers, transfers, limits))
            except asyncio.CancelledError:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(StoreClosed("the API stopped before the transfer was committed"))
                raise
            except Exception as exc:
                if len(transfers) > 1:
                    log.warning("transfer batch of %d failed (%s); applying one by one", len(transfers), type(exc).__name__)
                results = []
                for t in transfers:
                    try:
                        results.extend(await self.store.run_write(apply_transfers, [t], limits))
                    except asyncio.CancelledError:
                        raise
                    except Exception as one:
                        log.error("transfer %s of %s failed: %s", t.idem_key, t.principal, one)
                        results.append(one)
            self.batches += 1
            self.transfers += len(transfers)
            self.on_commit()
            for (_, fut), result in zip(live, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
