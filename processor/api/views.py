"""What a cardholder reads: accounts with balances, cards, and the history of an account's transactions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from processor.api.errors import ApiError
from processor.api.threads import PAGE_MAX, decode_cursor, encode_cursor
from processor.ledger.models import accounts, auths, cards, holds, journal_entries, merchants, postings, terminals
from processor.savings.models import savings_accounts, savings_products

a, c, au, h, je, p, t, m = accounts.c, cards.c, auths.c, holds.c, journal_entries.c, postings.c, terminals.c, merchants.c
sa, sp = savings_accounts.c, savings_products.c
CARD_OPS = ("hold", "debit", "credit")
APPROVED = ("00", "10")
# Sources of the history, ranked so that one cursor orders both.
CARD, BOOK = 1, 0

_ACCOUNT_COLS = (a.id, a.cardholder_id, a.kind, a.currency, a.status, a.ledger_minor, a.held_minor, a.created_at,
                 sp.code.label("product"), sp.annual_rate_ppm, sa.accrued_minor)
_ACCOUNTS = select(*_ACCOUNT_COLS).select_from(
    accounts.outerjoin(savings_accounts, sa.account_id == a.id).outerjoin(savings_products, sp.id == sa.product_id)
)


def account_json(row: Any) -> dict[str, Any]:
    out = {
        "id": row.id,
        "kind": row.kind,
        "currency": row.currency,
        "status": row.status,
        "ledger_minor": row.ledger_minor,
        "available_minor": row.ledger_minor - row.held_minor,
        "held_minor": row.held_minor,
        "created_at": row.created_at.isoformat(),
        "savings": None,
    }
    if row.kind == "savings" and row.product is not None:
        out["savings"] = {"product": row.product, "annual_rate_ppm": row.annual_rate_ppm,
                          "accrued_unposted_minor": row.accrued_minor}
    return out


def list_accounts(conn: Connection, me: int) -> list[dict[str, Any]]:
    return [account_json(r) for r in conn.execute(_ACCOUNTS.where(a.cardholder_id == me).order_by(a.id))]


def own_account(conn: Connection, me: int, account_id: int) -> dict[str, Any]:
    row = conn.execute(_ACCOUNTS.where(a.id == account_id)).first()
    if row is None or row.cardholder_id != me:
        raise ApiError("not_found", f"account {account_id} not found")
    return account_json(row)


_CARD_COLS = (c.id, c.account_id, c.status, c.last4, c.expiry, c.service_code, c.pin_method, c.pin_tries,
              c.replaced_by_card_id, c.created_at, a.cardholder_id)
_CARDS = select(*_CARD_COLS).join(accounts, a.id == c.account_id)


def card_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "account_id": row.account_id,
        "status": row.status,
        "last4": row.last4,
        "expiry": row.expiry,
        "chip": row.service_code.startswith(("2", "6")),
        "pin_set": row.pin_method is not None,
        "replaced_by_card_id": row.replaced_by_card_id,
        "created_at": row.created_at.isoformat(),
    }


def list_cards(conn: Connection, me: int) -> list[dict[str, Any]]:
    return [card_json(r) for r in conn.execute(_CARDS.where(a.cardholder_id == me).order_by(c.id))]


def own_card_row(conn: Connection, me: int, card_id: int) -> Any:
    row = conn.execute(_CARDS.where(c.id == card_id)).first()
    if row is None or row.cardholder_id != me:
        raise ApiError("not_found", f"card {card_id} not found")
    return row


# ------------------------------------------------------------------ transaction history


def _after(created: Any, rank: int, ident: Any, cursor: tuple[dt.datetime, int, int] | None, source: int) -> Any:
    """Rows of `source` strictly before the cursor in (created_at, source rank, id) descending order."""
    if cursor is None:
        return True
    at, c_rank, c_id = cursor
    if source < c_rank:
        return created <= at
    if source > c_rank:
        return created < at
    return or_(created < at, and_(created == at, ident < c_id))


def _card_status(row: Any) -> str:
    if row.op == "hold":
        return {"active": "pending", "captured": "posted"}.get(row.hold_status, "reversed")
    return "reversed" if row.reversed else "posted"


def transactions(conn: Connection, me: int, account_id: int, cursor: str | None, limit: int) -> dict[str, Any]:
    """Card transactions and bookings (payments, transfers, deposits, interest) of an account, newest first."""
    own_account(conn, me, account_id)
    limit = max(1, min(limit, PAGE_MAX))
    position = None
    if cursor:
        at_text, rank, ident = decode_cursor(cursor, (str, int, int))
        try:
            position = (dt.datetime.fromisoformat(at_text), rank, ident)
        except ValueError:
            raise ApiError("invalid_cursor", "cursor is not one this API handed out") from None
    card_rows = conn.execute(
        select(au.id, au.op, au.amount_minor, au.approved_minor, au.currency, au.reversed, au.card_id, au.created_at,
               h.status.label("hold_status"), h.captured_minor, m.name.label("merchant_name"), m.location.label("merchant_location"),
               m.mcc)
        .select_from(auths.outerjoin(holds, h.id == au.hold_id).outerjoin(terminals, t.terminal_id == au.terminal_id)
                     .outerjoin(merchants, m.id == t.merchant_id))
        .where(au.account_id == account_id, au.op.in_(CARD_OPS), au.rc.in_(APPROVED),
               _after(au.created_at, CARD, au.id, position, CARD))
        .order_by(au.created_at.desc(), au.id.desc())
        .limit(limit + 1)
    ).all()
    book_rows = conn.execute(
        select(je.id, je.kind, je.reference, je.created_at, p.amount_minor, p.currency)
        .join(postings, p.entry_id == je.id)
        .where(p.account_id == account_id, je.auth_id.is_(None), _after(je.created_at, BOOK, je.id, position, BOOK))
        .order_by(je.created_at.desc(), je.id.desc())
        .limit(limit + 1)
    ).all()
    merged: list[tuple[tuple[dt.datetime, int, int], dict[str, Any]]] = []
    for r in card_rows:
        status = _card_status(r)
        amount = r.captured_minor if r.op == "hold" and status == "posted" and r.captured_minor is not None else r.approved_minor
        merged.append(((r.created_at, CARD, r.id), {
            "id": f"card-{r.id}",
            "type": "card_refund" if r.op == "credit" else "card_payment",
            "status": status,
            "amount_minor": amount if r.op == "credit" else -amount,
            "currency": r.currency,
            "card_id": r.card_id,
            "merchant": {"name": r.merchant_name, "location": r.merchant_location, "mcc": r.mcc} if r.merchant_name else None,
            "created_at": r.created_at.isoformat(),
        }))
    for r in book_rows:
        merged.append(((r.created_at, BOOK, r.id), {
            "id": f"entry-{r.id}",
            "type": r.kind,
            "status": "posted",
            "amount_minor": r.amount_minor,
            "currency": r.currency,
            "card_id": None,
            "merchant": None,
            "created_at": r.created_at.isoformat(),
        }))
    merged.sort(key=lambda pair: pair[0], reverse=True)
    page = merged[:limit]
    next_cursor = None
    if len(merged) > limit:
        at, rank, ident = page[-1][0]
        next_cursor = encode_cursor([at.isoformat(), rank, ident])
    return {"items": [item for _, item in page], "next_cursor": next_cursor}
