"""Feed events of card traffic, written by the authorization hot path in the batch that answered it.

The store hands over the auths rows its batch answered; this turns them into one event each for the
cardholder: `card.authorization` (approved or declined, with merchant and amount) and `card.reversal`.
Three reads per batch find the cardholders, the cards' last digits and the merchants.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select

from processor.events.outbox import cardholder_event
from processor.ledger.models import accounts, cards, merchants, terminals

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


def card_events(conn: Connection, answered: Sequence[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """Event rows for the auths rows of one batch (those of a cardholder's account)."""
    mine = [row for row in answered if row.get("account_id") is not None and row["op"] in AUTHORIZATION_OPS | REVERSAL_OPS]
    if not mine:
        return []
    account_ids = sorted({row["account_id"] for row in mine})
    holders = {r.id: r.cardholder_id for r in conn.execute(_HOLDERS, {"ids": account_ids})}
    card_ids = sorted({r["card_id"] for r in mine if r.get("card_id") is not None})
    last4 = {r.id: r.last4 for r in conn.execute(_LAST4, {"ids": card_ids})} if card_ids else {}
    terminal_ids = sorted({r["terminal_id"] for r in mine if r.get("terminal_id")})
    shops = {t: {"name": n, "location": loc, "mcc": m, "terminal_id": t}
             for t, n, loc, m in conn.execute(_MERCHANTS, {"ids": terminal_ids})} if terminal_ids else {}
    rows = []
    for r in mine:
        cardholder_id = holders.get(r["account_id"])
        if cardholder_id is None:
            continue  # an internal account: nobody's feed
        data = {
            "card_id": r.get("card_id"),
            "last4": last4.get(r.get("card_id")),
            "account_id": r["account_id"],
            "amount_minor": r["amount_minor"],
            "approved_minor": r["approved_minor"],
            "currency": r["currency"],
            "merchant": shops.get(r.get("terminal_id") or ""),
        }
        if r["op"] in REVERSAL_OPS:
            rows.append(cardholder_event(cardholder_id, "card.reversal", data, now))
            continue
        approved = r["rc"] in APPROVALS
        data |= {
            "approved": approved,
            "kind": {"hold": "authorization", "debit": "purchase", "credit": "refund", "increment": "incremental"}.get(r["op"], "declined"),
            "response_code": r["rc"],
            "decline_reason": None if approved else r["reason"],
        }
        rows.append(cardholder_event(cardholder_id, "card.authorization", data, now))
    return rows
