"""Accounts with cards, an operation builder and an invariant check for the ledger tests."""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
from dataclasses import dataclass
from typing import Any

from processor.auth.answers import LEDGER_ANSWERS
from processor import issuing, ledger
from processor.issuing.cards import NewCard
from processor.ledger import Store, ops

_seq = itertools.count(1)
IN_A_WEEK = dt.timedelta(days=7)


@dataclass(frozen=True)
class Funded:
    account_id: int
    card_id: int
    currency: str


async def open_funded(store: Store, deposit_minor: int, *, currency: str = "EUR", status: str = "active") -> Funded:
    """A cardholder with one account holding `deposit_minor`, and an active card on it."""
    tag = secrets.token_hex(6)
    cardholder = await issuing.cardholders.create(store, f"Holder {tag}", f"h-{tag}")
    account_id = await ledger.accounts.open_account(store, cardholder, "checking", currency)
    if deposit_minor:
        await ledger.accounts.deposit(store, account_id, deposit_minor, reference="test funding")
    card_id = await issuing.cards.create(store, 
        NewCard(
            account_id=account_id,
            token=f"9{secrets.randbelow(10**15):015d}",
            last4="0010",
            pan_fingerprint=f"fp-{tag}",
            sealed_pan=f"sealed-{tag}",
            expiry="3012",
            service_code="201",
            status=status,
        )
    )
    return Funded(account_id, card_id, currency)


def op(op_type: type, who: Funded | None, amount_minor: int, **extra: Any) -> Any:
    """An operation of `op_type` for `who`'s card with a fresh idempotency key unless one is given."""
    n = next(_seq)
    fields: dict[str, Any] = dict(
        idem_key=extra.pop("idem_key", f"key-{n}-{secrets.token_hex(3)}"),
        mti=extra.pop("mti", "0100"),
        terminal_id="TERM0001",
        stan=f"{n % 1000000:06d}",
        rrn=f"{n:012d}",
        card_id=who.card_id if who else None,
        account_id=who.account_id if who else None,
        amount_minor=amount_minor,
        currency=extra.pop("currency", who.currency if who else "EUR"),
        auth_code="A1B2C3",
        answer_codes=LEDGER_ANSWERS,
    )
    if op_type is ops.PlaceHold:
        fields["expires_at"] = extra.pop("expires_at", dt.datetime.now(dt.UTC) + IN_A_WEEK)
    fields.update(extra)
    return op_type(**fields)


async def healthy(store: Store) -> dict[str, Any]:
    """Assert the invariants hold; returns the ledger report."""
    failures = await ledger.invariants.check(store)
    assert failures == []
    return await ledger.invariants.report(store)
