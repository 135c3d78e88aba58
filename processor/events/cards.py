"""Feed events of card traffic, written by the authorization hot path in the batch that answered it.

The store hands over the auths rows its batch answered; this turns them into one event each for the
cardholder: `card.authorization` (approved or declined, with merchant and amount) and `card.reversal`.
Three reads per batch find the cardholders, the cards' last digits and the merchants.
"""

from __future__ import annotations

import datetime as dt
import time
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
    """Event rows for the auths rows of one batch (those of a cardholder's account)."""
    mine = [row for row in answered if row.get("account_id") is not None and row["op"] in AUTHORIZATION_OPS | REVERSAL_OPS]
    if not mine:
        return []
    database = conn.engine.url.render_as_string(hide_password=True)
    memo = _memos.get(database)
    if memo is None:
        memo = _memos[database] = _Memo()
    memo.fill(conn, {r["account_id"] for r in mine}, {r["card_id"] for r in mine if r.get("card_id") is not None},
              {r["terminal_id"] for r in mine if r.get("terminal_id")})
    holders, last4, shops = memo.holders, memo.last4, memo.shops
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
            "merchant": shops.get(r.get("terminal_id") or "", (0.0, None))[1],
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
