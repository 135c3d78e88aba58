"""Conversations between two cardholders: one ordered thread of messages, payments and payment requests.

Store bodies here run inside the caller's transaction and return JSON-ready dicts.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from sqlalchemy import Connection, bindparam, insert, or_, select, update

from processor.api.errors import ApiError
from processor.api.models import conversation_items, conversations, payment_requests
from processor.events.outbox import cardholder_event, write_events
from processor.ledger.models import accounts, cardholders, utcnow

MESSAGE_MAX_CHARS = 1000
NOTE_MAX_CHARS = 280
REQUEST_TTL_DEFAULT = dt.timedelta(days=7)
REQUEST_TTL_MAX = dt.timedelta(days=30)
PAGE_MAX = 100

cv, it, rq, ch, a = conversations.c, conversation_items.c, payment_requests.c, cardholders.c, accounts.c
_CHECKING = (
    select(a.id, a.status, a.currency, a.cardholder_id)
    .where(a.cardholder_id == bindparam("cid"), a.kind == "checking", a.currency == bindparam("cur"), a.status != "closed")
    .order_by(a.id)
    .limit(1)
)


def checking_account(conn: Connection, cardholder_id: int, currency: str) -> Any:
    """A cardholder's (first) checking account in `currency` that is not closed, or None."""
    return conn.execute(_CHECKING, {"cid": cardholder_id, "cur": currency}).first()


def normalize_handle(text: str) -> str:
    """'@Ada' -> 'Ada' (handles are matched exactly, without the leading @)."""
    return text[1:] if text.startswith("@") else text


def cardholder_by_handle(conn: Connection, handle: str) -> Any:
    row = conn.execute(select(ch.id, ch.handle, ch.name).where(ch.handle == normalize_handle(handle))).first()
    if row is None:
        raise ApiError("recipient_not_found", f"no cardholder with handle @{normalize_handle(handle)}")
    return row


def conversation_between(conn: Connection, a: int, b: int, now: dt.datetime, cache: dict[tuple[int, int], int] | None = None) -> int:
    """The id of the one conversation of cardholders a and b, created when missing."""
    if a == b:
        raise ApiError("cannot_pay_yourself", "a conversation needs two different cardholders")
    pair = (min(a, b), max(a, b))
    if cache is not None and pair in cache:
        return cache[pair]
    found = conn.execute(select(cv.id).where(cv.low_id == pair[0], cv.high_id == pair[1])).scalar()
    if found is None:
        found = conn.execute(
            insert(conversations).returning(cv.id), {"low_id": pair[0], "high_id": pair[1], "created_at": now}
        ).scalar_one()
    if cache is not None:
        cache[pair] = found
    return found


def own_conversation(conn: Connection, conversation_id: int, me: int) -> Any:
    """The conversation if `me` is in it (else not_found: another's thread does not exist for the caller)."""
    row = conn.execute(select(cv.id, cv.low_id, cv.high_id, cv.created_at).where(cv.id == conversation_id)).first()
    if row is None or me not in (row.low_id, row.high_id):
        raise ApiError("not_found", f"conversation {conversation_id} not found")
    return row


def other_of(row: Any, me: int) -> int:
    return row.high_id if row.low_id == me else row.low_id


def _handles(conn: Connection, ids: set[int]) -> dict[int, str]:
    return {r.id: r.handle for r in conn.execute(select(ch.id, ch.handle).where(ch.id.in_(ids)))} if ids else {}


def item_json(row: Any, handles: dict[int, str], request: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "conversation_id": row.conversation_id,
        "type": row.kind,
        "sender": handles.get(row.sender_id, ""),
        "text": row.text,
        "created_at": row.created_at.isoformat(),
    }
    if row.kind != "message":
        out["amount_minor"] = row.amount_minor
        out["currency"] = row.currency
    out["request_id"] = row.request_id
    if request is not None:
        out["request"] = request_json(request, handles)
    return out


def request_json(row: Any, handles: dict[int, str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "conversation_id": row.conversation_id,
        "requester": handles.get(row.requester_id, ""),
        "payer": handles.get(row.payer_id, ""),
        "amount_minor": row.amount_minor,
        "currency": row.currency,
        "note": row.note,
        "status": row.status,
        "expires_at": row.expires_at.isoformat(),
        "payment_id": row.payment_item_id,
        "created_at": row.created_at.isoformat(),
        "closed_at": row.closed_at.isoformat() if row.closed_at else None,
    }


_REQ_COLS = (rq.id, rq.conversation_id, rq.requester_id, rq.payer_id, rq.amount_minor, rq.currency, rq.note, rq.status,
             rq.expires_at, rq.payment_item_id, rq.created_at, rq.closed_at)
_ITEM_COLS = (it.id, it.conversation_id, it.kind, it.sender_id, it.text, it.amount_minor, it.currency, it.request_id, it.created_at)


# ------------------------------------------------------------------ reads


def list_conversations(conn: Connection, me: int) -> list[dict[str, Any]]:
    rows = conn.execute(select(cv.id, cv.low_id, cv.high_id, cv.created_at).where(or_(cv.low_id == me, cv.high_id == me)).order_by(cv.id)).all()
    handles = _handles(conn, {other_of(r, me) for r in rows} | {me})
    out = []
    for r in rows:
        last = conn.execute(select(*_ITEM_COLS).where(it.conversation_id == r.id).order_by(it.id.desc()).limit(1)).first()
        out.append({
            "id": r.id,
            "with": handles[other_of(r, me)],
            "created_at": r.created_at.isoformat(),
            "last_item": item_json(last, _handles(conn, {last.sender_id})) if last is not None else None,
        })
    return out


def conversation_json(conn: Connection, conversation_id: int, me: int) -> dict[str, Any]:
    row = own_conversation(conn, conversation_id, me)
    handles = _handles(conn, {other_of(row, me)})
    return {"id": row.id, "with": handles[other_of(row, me)], "created_at": row.created_at.isoformat(), "last_item": None}


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, shape: tuple[type, ...]) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise ApiError("invalid_cursor", "cursor is not one this API handed out") from None
    if not isinstance(values, list) or len(values) != len(shape) or not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(values, shape)):
        raise ApiError("invalid_cursor", "cursor is not one this API handed out")
    return values


def list_items(conn: Connection, conversation_id: int, me: int, cursor: str | None, limit: int) -> dict[str, Any]:
    """The thread, newest first; `next_cursor` pages to older items."""
    own_conversation(conn, conversation_id, me)
    limit = max(1, min(limit, PAGE_MAX))
    stmt = select(*_ITEM_COLS).where(it.conversation_id == conversation_id)
    if cursor:
        (before,) = decode_cursor(cursor, (int,))
        stmt = stmt.where(it.id < before)
    rows = conn.execute(stmt.order_by(it.id.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    req_ids = {r.request_id for r in page if r.request_id is not None}
    reqs = {r.id: r for r in conn.execute(select(*_REQ_COLS).where(rq.id.in_(req_ids)))} if req_ids else {}
    handles = _handles(conn, {r.sender_id for r in page} | {x for q in reqs.values() for x in (q.requester_id, q.payer_id)})
    return {
        "items": [item_json(r, handles, reqs.get(r.request_id) if r.kind == "request" else None) for r in page],
        "next_cursor": encode_cursor([page[-1].id]) if len(rows) > limit else None,
    }


def get_request(conn: Connection, request_id: int, me: int) -> dict[str, Any]:
    row = conn.execute(select(*_REQ_COLS).where(rq.id == request_id)).first()
    if row is None or me not in (row.requester_id, row.payer_id):
        raise ApiError("not_found", f"payment request {request_id} not found")
    return request_json(row, _handles(conn, {row.requester_id, row.payer_id}))


def list_requests(conn: Connection, me: int, status: str | None) -> list[dict[str, Any]]:
    stmt = select(*_REQ_COLS).where(or_(rq.requester_id == me, rq.payer_id == me))
    if status is not None:
        stmt = stmt.where(rq.status == status)
    rows = conn.execute(stmt.order_by(rq.id.desc()).limit(PAGE_MAX)).all()
    handles = _handles(conn, {x for r in rows for x in (r.requester_id, r.payer_id)})
    return [request_json(r, handles) for r in rows]


# ------------------------------------------------------------------ writes (each inside an idempotent transaction)


def send_message(conn: Connection, me: int, conversation_id: int, text: str) -> tuple[int, dict[str, Any]]:
    row = own_conversation(conn, conversation_id, me)
    text = text.strip()
    if not text or len(text) > MESSAGE_MAX_CHARS:
        raise ApiError("invalid_request", f"a message has 1 to {MESSAGE_MAX_CHARS} characters", details={"fields": ["text"]})
    now = utcnow()
    item_id = conn.execute(
        insert(conversation_items).returning(it.id),
        {"conversation_id": row.id, "kind": "message", "sender_id": me, "text": text, "amount_minor": None, "currency": None,
         "entry_id": None, "request_id": None, "created_at": now},
    ).scalar_one()
    other = other_of(row, me)
    handles = _handles(conn, {me, other})
    item = conn.execute(select(*_ITEM_COLS).where(it.id == item_id)).one()
    body = item_json(item, handles)
    write_events(conn, [cardholder_event(other, "message.received", {"conversation_id": row.id, "item_id": item_id, "from": handles[me], "text": text}, now)])
    return 201, body


def open_conversation(conn: Connection, me: int, with_handle: str) -> tuple[int, dict[str, Any]]:
    other = cardholder_by_handle(conn, with_handle)
    if other.id == me:
        raise ApiError("invalid_request", "a conversation is with someone else", details={"fields": ["with"]})
    conversation_id = conversation_between(conn, me, other.id, utcnow())
    return 200, conversation_json(conn, conversation_id, me)


def create_request(conn: Connection, me: int, payer_handle: str, amount_minor: int, currency: str, note: str, ttl: dt.timedelta) -> tuple[int, dict[str, Any]]:
    payer = cardholder_by_handle(conn, payer_handle)
    if payer.id == me:
        raise ApiError("cannot_pay_yourself", "a payment request goes to someone else")
    if checking_account(conn, me, currency) is None:
        raise ApiError("currency_mismatch", f"you have no checking account in {currency}")
    if checking_account(conn, payer.id, currency) is None:
        raise ApiError("recipient_not_found", f"@{payer.handle} has no account in {currency}")
    now = utcnow()
    conversation_id = conversation_between(conn, me, payer.id, now)
    request_id = conn.execute(
        insert(payment_requests).returning(rq.id),
        {"conversation_id": conversation_id, "requester_id": me, "payer_id": payer.id, "amount_minor": amount_minor,
         "currency": currency, "note": note, "status": "open", "expires_at": now + ttl, "payment_item_id": None,
         "created_at": now, "closed_at": None},
    ).scalar_one()
    conn.execute(
        insert(conversation_items),
        {"conversation_id": conversation_id, "kind": "request", "sender_id": me, "text": note, "amount_minor": amount_minor,
         "currency": currency, "entry_id": None, "request_id": request_id, "created_at": now},
    )
    body = get_request(conn, request_id, me)
    write_events(conn, [cardholder_event(who, "request.created", body, now) for who in (me, payer.id)])
    return 201, body


def close_request(conn: Connection, me: int, request_id: int, action: str) -> tuple[int, dict[str, Any]]:
    """decline (the payer) or cancel (the requester) an open request."""
    row = conn.execute(select(*_REQ_COLS).where(rq.id == request_id)).first()
    if row is None or me not in (row.requester_id, row.payer_id):
        raise ApiError("not_found", f"payment request {request_id} not found")
    allowed = row.payer_id if action == "decline" else row.requester_id
    if me != allowed:
        who = "payer" if action == "decline" else "requester"
        raise ApiError("forbidden", f"only the request's {who} can {action} it")
    now = utcnow()
    if row.status == "open" and row.expires_at <= now:
        expire_requests(conn, now, only_id=request_id)
        raise ApiError("request_expired", f"payment request {request_id} expired at {row.expires_at.isoformat()}")
    status = "declined" if action == "decline" else "cancelled"
    moved = conn.execute(
        update(payment_requests).where(rq.id == request_id, rq.status == "open").values(status=status, closed_at=now)
    ).rowcount
    if not moved:
        raise ApiError("request_not_open", f"payment request {request_id} is {row.status}")
    body = get_request(conn, request_id, me)
    write_events(conn, [cardholder_event(who, f"request.{status}", body, now) for who in (row.requester_id, row.payer_id)])
    return 200, body


def expire_requests(conn: Connection, now: dt.datetime, *, only_id: int | None = None, limit: int = 500) -> int:
    """Mark open requests past their expiry as expired (one event each for both people); how many."""
    stmt = select(*_REQ_COLS).where(rq.status == "open", rq.expires_at <= now)
    if only_id is not None:
        stmt = stmt.where(rq.id == only_id)
    rows = conn.execute(stmt.order_by(rq.id).limit(limit)).all()
    done, evs = 0, []
    handles = _handles(conn, {x for r in rows for x in (r.requester_id, r.payer_id)})
    for r in rows:
        if conn.execute(update(payment_requests).where(rq.id == r.id, rq.status == "open").values(status="expired", closed_at=now)).rowcount:
            done += 1
            body = request_json(r, handles) | {"status": "expired", "closed_at": now.isoformat()}
            evs += [cardholder_event(who, "request.expired", body, now) for who in (r.requester_id, r.payer_id)]
    write_events(conn, evs)
    return done


