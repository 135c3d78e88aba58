"""Money between people and between a person's own accounts: instant, double entry, group-committed.

`TransferDesk.submit` queues a transfer; a writer takes what is waiting (up to `max_batch`) and applies it in
ONE store transaction, then answers: each payment is durable before its answer, and one commit serves many
payments. Each transfer runs under a savepoint, so one refused payment leaves its neighbours alone. Its
Idempotency-Key record and its feed events are written in the same transaction as the money.

Funds are taken by one conditional UPDATE (open and enough available), the per-day totals by one
conditional upsert, so no interleaving of requests, writers or processes can overdraw an account or pass a
limit. On PostgreSQL a batch locks its accounts in id order first, as the authorization hot path does.
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

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from processor.api import idempotency as idem
from processor.api.errors import ApiError
from processor.api.models import conversation_items, p2p_daily, payment_requests
from processor.api.threads import NOTE_MAX_CHARS, cardholder_by_handle, conversation_between, request_json
from processor.events.outbox import cardholder_event, write_events
from processor.ledger.apply import BatchState, post_entry
from processor.ledger.models import accounts, cardholders, utcnow
from processor.ledger.records import StoreBusy, StoreClosed

log = logging.getLogger("processor.api.payments")

DAILY_LIMIT_CONFIG = "p2p.daily_limit_minor"
DAILY_COUNT_CONFIG = "p2p.daily_count"
DEFAULT_DAILY_LIMIT_MINOR = 2_500_00
DEFAULT_DAILY_COUNT = 100

a, it, rq, pd, ch = accounts.c, conversation_items.c, payment_requests.c, p2p_daily.c, cardholders.c

_CHECKING = (
    select(a.id, a.status, a.currency, a.cardholder_id)
    .where(a.cardholder_id == bindparam("cid"), a.kind == "checking", a.currency == bindparam("cur"), a.status != "closed")
    .order_by(a.id)
    .limit(1)
)
_ACCOUNT = select(a.id, a.status, a.currency, a.cardholder_id, a.kind).where(a.id == bindparam("aid"))
_TAKE = (
    update(accounts)
    .where(a.id == bindparam("aid"), a.status == "open", a.ledger_minor - a.held_minor >= bindparam("amt"))
    .values(ledger_minor=a.ledger_minor - bindparam("amt"))
    .returning(a.ledger_minor, a.held_minor)
)
_GIVE = (
    update(accounts)
    .where(a.id == bindparam("aid"), a.status == "open")
    .values(ledger_minor=a.ledger_minor + bindparam("amt"))
    .returning(a.ledger_minor)
)
_INS_ITEM = insert(conversation_items).returning(it.id)
_LOCK = select(a.id).where(a.id.in_(bindparam("ids", expanding=True))).order_by(a.id).with_for_update()


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


def checking_account(conn: Connection, cardholder_id: int, currency: str) -> Any:
    """A cardholder's (first) checking account in `currency` that is not closed, or None."""
    return conn.execute(_CHECKING, {"cid": cardholder_id, "cur": currency}).first()


def check_amount(amount_minor: int, currency: str) -> None:
    if amount_minor <= 0:
        raise ApiError("invalid_request", "amount_minor must be a positive integer", details={"fields": ["amount_minor"]})
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()):
        raise ApiError("invalid_request", "currency must be an ISO 4217 code such as EUR", details={"fields": ["currency"]})


# ------------------------------------------------------------------ the batch (inside one transaction)


@dataclass(slots=True)
class _Batch:
    now: dt.datetime
    state: BatchState
    limits: Limits
    conversations: dict[tuple[int, int], int]
    events: list[dict[str, Any]]
    handles: dict[int, str]


def apply_transfers(conn: Connection, batch: Sequence[Transfer], limits: Limits) -> list[idem.Answer]:
    """Apply `batch` in order inside the caller's transaction; the answers hold once it commits."""
    now = utcnow()
    b = _Batch(now, BatchState(now=now, internal_ids={}), limits, {}, [], {})
    stored = idem.stored_many(conn, list({(t.principal, t.idem_key) for t in batch}))
    if conn.dialect.name == "postgresql":
        _lock_accounts(conn, batch)
    answers: list[idem.Answer] = []
    fresh: dict[tuple[str, str], tuple[str, idem.Answer]] = {}
    records = []
    for t in batch:
        k = (t.principal, t.idem_key)
        try:
            if k in fresh:
                rhash, first = fresh[k]
                if rhash != t.rhash:
                    raise ApiError("idempotency_key_reused", "this Idempotency-Key was already used for a different request")
                answers.append(idem.Answer(first.status, first.body, replayed=True))
                continue
            if k in stored:
                answers.append(idem.answer_from_row(stored[k], t.rhash))
                continue
        except ApiError as err:
            answers.append(idem.Answer(err.status, err.body()))
            continue
        mark = len(b.events)
        try:
            with conn.begin_nested():
                answer = _own(conn, b, t) if t.kind == "own" else _p2p(conn, b, t)
        except ApiError as err:
            del b.events[mark:]
            answer = idem.Answer(err.status, err.body())
        fresh[k] = (t.rhash, answer)
        records.append(idem.record_row(t.principal, t.idem_key, t.rhash, answer, now))
        answers.append(answer)
    if records:
        conn.execute(insert(idem.idempotency), records)
    write_events(conn, b.events)
    return answers


def _lock_accounts(conn: Connection, batch: Sequence[Transfer]) -> None:
    """PostgreSQL: lock every account the batch may touch, in id order, so parallel batches never deadlock."""
    ids: set[int] = set()
    for t in batch:
        if t.kind == "own":
            ids.update(x for x in (t.from_account_id, t.to_account_id) if x is not None)
            continue
        payer = checking_account(conn, t.payer_id, t.currency) if t.currency else None
        if payer is not None:
            ids.add(payer.id)
        payee_id = None
        if t.request_id is not None:
            row = conn.execute(select(rq.requester_id, rq.currency).where(rq.id == t.request_id)).first()
            if row is not None:
                payer = checking_account(conn, t.payer_id, row.currency)
                ids.update([payer.id] if payer is not None else [])
                payee_id, currency = row.requester_id, row.currency
        elif t.payee_handle:
            found = conn.execute(select(ch.id).where(ch.handle == t.payee_handle.lstrip("@"))).scalar()
            payee_id, currency = found, t.currency
        if payee_id is not None:
            payee = checking_account(conn, payee_id, currency)
            if payee is not None:
                ids.add(payee.id)
    if ids:
        conn.execute(_LOCK, {"ids": sorted(ids)})


def _handle(conn: Connection, b: _Batch, cardholder_id: int) -> str:
    found = b.handles.get(cardholder_id)
    if found is None:
        found = b.handles[cardholder_id] = conn.execute(select(ch.handle).where(ch.id == cardholder_id)).scalar_one()
    return found


def _count_against_limits(conn: Connection, b: _Batch, account_id: int, amount_minor: int) -> None:
    day = b.now.date()
    limit_minor, limit_count = b.limits.daily_minor, b.limits.daily_count
    if amount_minor > limit_minor:
        raise ApiError("daily_limit_exceeded", f"the per-day limit for payments to people is {limit_minor} minor units",
                       details={"limit_minor": limit_minor})
    insert_ = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    stmt = insert_(p2p_daily).values(account_id=account_id, day=day, sent_minor=amount_minor, sent_count=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[pd.account_id, pd.day],
        set_={"sent_minor": pd.sent_minor + amount_minor, "sent_count": pd.sent_count + 1},
        where=(pd.sent_minor + amount_minor <= limit_minor) & (pd.sent_count + 1 <= limit_count),
    ).returning(pd.sent_minor)
    if conn.execute(stmt).first() is not None:
        return
    row = conn.execute(select(pd.sent_minor, pd.sent_count).where(pd.account_id == account_id, pd.day == day)).one()
    if row.sent_count + 1 > limit_count:
        raise ApiError("daily_count_exceeded", f"at most {limit_count} payments to people a day",
                       details={"limit_count": limit_count, "sent_count": row.sent_count})
    raise ApiError("daily_limit_exceeded", f"the per-day limit for payments to people is {limit_minor} minor units",
                   details={"limit_minor": limit_minor, "sent_minor": row.sent_minor})


def _take(conn: Connection, account_id: int, amount_minor: int) -> Any:
    row = conn.execute(_TAKE, {"aid": account_id, "amt": amount_minor}).first()
    if row is not None:
        return row
    status = conn.execute(select(a.status).where(a.id == account_id)).scalar()
    if status != "open":
        raise ApiError("account_not_open", f"your account {account_id} is {status}: it can neither send nor receive")
    raise ApiError("insufficient_funds", f"account {account_id} does not have {amount_minor} minor units available")


def _p2p(conn: Connection, b: _Batch, t: Transfer) -> idem.Answer:
    request = None
    amount_minor, currency, note = t.amount_minor, t.currency, t.note
    if t.request_id is not None:
        request = conn.execute(select(rq).where(rq.id == t.request_id)).first()
        if request is None or t.payer_id not in (request.payer_id, request.requester_id):
            raise ApiError("not_found", f"payment request {t.request_id} not found")
        if request.payer_id != t.payer_id:
            raise ApiError("forbidden", "only the request's payer can pay it")
        if request.status == "paid":
            return _paid_already(conn, b, request)
        if request.status == "open" and request.expires_at <= b.now:
            return _expired(conn, b, request)
        if request.status != "open":
            raise ApiError("request_not_open", f"payment request {request.id} is {request.status}")
        amount_minor, currency, note, payee_id = request.amount_minor, request.currency, request.note, request.requester_id
    else:
        check_amount(amount_minor, currency)
        payee_id = cardholder_by_handle(conn, t.payee_handle or "").id
    if payee_id == t.payer_id:
        raise ApiError("cannot_pay_yourself", "payer and payee are the same cardholder")
    payer = checking_account(conn, t.payer_id, currency)
    if payer is None:
        raise ApiError("currency_mismatch", f"you have no account in {currency}")
    payee = checking_account(conn, payee_id, currency)
    if payee is None:
        raise ApiError("recipient_not_found", f"the recipient has no account in {currency}")
    if payer.status != "open":
        raise ApiError("account_not_open", f"your account {payer.id} is {payer.status}: it can neither send nor receive")
    if payee.status != "open":
        raise ApiError("recipient_cannot_receive", "the recipient's account cannot receive payments now")
    _count_against_limits(conn, b, payer.id, amount_minor)
    after = _take(conn, payer.id, amount_minor)
    if conn.execute(_GIVE, {"aid": payee.id, "amt": amount_minor}).first() is None:
        raise ApiError("recipient_cannot_receive", "the recipient's account cannot receive payments now")
    entry_id = post_entry(conn, b.state, "p2p", f"p2p {t.principal} {t.idem_key}", [(payer.id, -amount_minor), (payee.id, amount_minor)], currency)
    conversation_id = conversation_between(conn, t.payer_id, payee_id, b.now, b.conversations)
    item_id = conn.execute(
        _INS_ITEM,
        {"conversation_id": conversation_id, "kind": "payment", "sender_id": t.payer_id, "text": note, "amount_minor": amount_minor,
         "currency": currency, "entry_id": entry_id, "request_id": t.request_id, "created_at": b.now},
    ).scalar_one()
    if request is not None:
        moved = conn.execute(
            update(payment_requests).where(rq.id == request.id, rq.status == "open").values(status="paid", payment_item_id=item_id, closed_at=b.now)
        ).rowcount
        if not moved:
            raise ApiError("conflict", f"payment request {request.id} changed meanwhile; read it again")
    payer_handle, payee_handle = _handle(conn, b, t.payer_id), _handle(conn, b, payee_id)
    payment = {
        "id": item_id,
        "conversation_id": conversation_id,
        "from": payer_handle,
        "to": payee_handle,
        "amount_minor": amount_minor,
        "currency": currency,
        "note": note,
        "request_id": t.request_id,
        "created_at": b.now.isoformat(),
    }
    b.events.append(cardholder_event(t.payer_id, "payment.sent", payment, b.now))
    b.events.append(cardholder_event(payee_id, "payment.received", payment, b.now))
    return idem.Answer(201, payment | {"balance": {"account_id": payer.id, "ledger_minor": after.ledger_minor,
                                                     "available_minor": after.ledger_minor - after.held_minor}})


def _paid_already(conn: Connection, b: _Batch, request: Any) -> idem.Answer:
    """Paying a paid request again answers with the payment that paid it, and moves nothing."""
    item = conn.execute(select(it.id, it.conversation_id, it.text, it.created_at).where(it.id == request.payment_item_id)).one()
    return idem.Answer(200, {
        "id": item.id, "conversation_id": item.conversation_id, "from": _handle(conn, b, request.payer_id),
        "to": _handle(conn, b, request.requester_id), "amount_minor": request.amount_minor, "currency": request.currency,
        "note": item.text, "request_id": request.id, "created_at": item.created_at.isoformat(),
    })


def _expired(conn: Connection, b: _Batch, request: Any) -> idem.Answer:
    """An open request past its expiry: it becomes expired now (with its events) and cannot be paid."""
    conn.execute(update(payment_requests).where(rq.id == request.id, rq.status == "open").values(status="expired", closed_at=b.now))
    handles = {request.payer_id: _handle(conn, b, request.payer_id), request.requester_id: _handle(conn, b, request.requester_id)}
    body = request_json(request, handles) | {"status": "expired", "closed_at": b.now.isoformat()}
    b.events += [cardholder_event(who, "request.expired", body, b.now) for who in (request.requester_id, request.payer_id)]
    err = ApiError("request_expired", f"payment request {request.id} expired at {request.expires_at.isoformat()}")
    return idem.Answer(err.status, err.body())


def _own(conn: Connection, b: _Batch, t: Transfer) -> idem.Answer:
    if t.amount_minor <= 0:
        raise ApiError("invalid_request", "amount_minor must be a positive integer", details={"fields": ["amount_minor"]})
    rows = {}
    for which, account_id in (("from_account_id", t.from_account_id), ("to_account_id", t.to_account_id)):
        row = conn.execute(_ACCOUNT, {"aid": account_id}).first()
        if row is None or row.cardholder_id != t.payer_id:
            raise ApiError("not_found", f"account {account_id} not found", details={"fields": [which]})
        rows[which] = row
    source, target = rows["from_account_id"], rows["to_account_id"]
    if source.id == target.id:
        raise ApiError("invalid_request", "from and to are the same account", details={"fields": ["to_account_id"]})
    if source.currency != target.currency:
        raise ApiError("currency_mismatch", f"account {source.id} is in {source.currency}, account {target.id} in {target.currency}")
    for row in (source, target):
        if row.status != "open":
            raise ApiError("account_not_open", f"account {row.id} is {row.status}")
    after = _take(conn, source.id, t.amount_minor)
    target_after = conn.execute(_GIVE, {"aid": target.id, "amt": t.amount_minor}).first()
    if target_after is None:
        raise ApiError("account_not_open", f"account {target.id} is not open")
    entry_id = post_entry(conn, b.state, "transfer", f"own {t.principal} {t.idem_key}", [(source.id, -t.amount_minor), (target.id, t.amount_minor)], source.currency)
    transfer = {
        "id": entry_id,
        "from_account_id": source.id,
        "to_account_id": target.id,
        "amount_minor": t.amount_minor,
        "currency": source.currency,
        "note": t.note,
        "created_at": b.now.isoformat(),
        "from_balance_minor": after.ledger_minor,
        "to_balance_minor": target_after.ledger_minor,
    }
    b.events.append(cardholder_event(t.payer_id, "transfer.completed", transfer, b.now))
    return idem.Answer(201, transfer)


# ------------------------------------------------------------------ the desk (group commit)


async def load_limits(store: Any) -> Limits:
    limit = await store.get_config(DAILY_LIMIT_CONFIG)
    count = await store.get_config(DAILY_COUNT_CONFIG)
    return Limits(int(limit) if limit else DEFAULT_DAILY_LIMIT_MINOR, int(count) if count else DEFAULT_DAILY_COUNT)


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
        self.batches = 0
        self.transfers = 0

    async def start(self) -> None:
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
        """Apply `transfer` with its neighbours in one transaction; returns once it is committed."""
        fut: asyncio.Future[idem.Answer] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.submit_timeout_s):
                await self._queue.put((transfer, fut))
                return await fut
        except TimeoutError:
            raise StoreBusy(f"no commit within {self.submit_timeout_s}s; retry with the same Idempotency-Key") from None

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
