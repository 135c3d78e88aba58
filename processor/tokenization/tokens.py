"""Payment tokens: the table of wallet device tokens, their lifecycle and the engine's token look-up.

A token stands for a card inside one wallet on one device. Its lifecycle: active <-> suspended, either ->
deleted (final); every move is a row in `token_events`. When a card is replaced, its active and suspended
tokens move to the new card (`close_and_repoint`), so the wallet keeps working.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from processor.errors import InvalidRequest
from processor.issuing.cards import CARD_COLUMNS, CardRecord, card_from_values, change_status
from processor.ledger import Lookup, StoreError, StoreInterface, StoreNotFound
from processor.ledger.models import accounts, cards, payment_tokens, token_events, utcnow

TOKEN_STATUSES = frozenset({"active", "suspended", "deleted"})
# Deleted is final; a suspended token can come back. The value is the lifecycle event the move records.
TOKEN_TRANSITIONS: dict[str, dict[str, str]] = {
    "active": {"suspended": "suspended", "deleted": "deleted"},
    "suspended": {"active": "resumed", "deleted": "deleted"},
    "deleted": {},
}
# A token whose card is replaced follows the new card; a deleted one stays with the old card.
REPOINTABLE = ("active", "suspended")


@dataclass(frozen=True, slots=True)
class NewPaymentToken:
    """A payment token to create: its number is already fingerprinted and sealed by the HSM."""

    card_id: int
    token_fingerprint: str
    fingerprint_version: int
    sealed_token: str
    data_key_version: int
    token_last4: str
    token_bin: str
    expiry: str
    requestor_id: str
    wallet: str
    device_id: str
    allowed_entry_modes: tuple[str, ...] = ("07",)
    mcc_allow: tuple[str, ...] | None = None
    merchant_allow: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the engine needs of a payment token: status, expiry and domain restrictions."""

    token_id: int
    card_id: int
    status: str
    expiry: str
    requestor_id: str
    allowed_entry_modes: tuple[str, ...]
    mcc_allow: tuple[str, ...] | None
    merchant_allow: tuple[str, ...] | None
    token_last4: str
    last_atc: int | None


@dataclass(frozen=True, slots=True)
class TokenView:
    """A payment token as an operator sees it (no secret)."""

    id: int
    card_id: int
    status: str
    expiry: str
    token_last4: str
    token_bin: str
    requestor_id: str
    wallet: str
    device_id: str
    allowed_entry_modes: tuple[str, ...]
    mcc_allow: tuple[str, ...] | None
    merchant_allow: tuple[str, ...] | None
    fingerprint_version: int
    data_key_version: int
    last_atc: int | None
    created_at: dt.datetime
    updated_at: dt.datetime


# ------------------------------------------------------------------ the engine's look-up

_TOKEN_COLUMNS = tuple(
    payment_tokens.c[name]
    for name in (
        "id", "card_id", "status", "expiry", "requestor_id", "allowed_entry_modes", "mcc_allow", "merchant_allow",
        "token_last4", "last_atc",
    )
)
# One row: the token, its card and the card's account (the card's columns keep CARD_COLUMNS' names), so a
# closed card or a frozen account shows at once, whatever the token's own status.
_TOKEN_CARD_SELECT = select(
    *(column.label(f"t_{column.name}") for column in _TOKEN_COLUMNS), *CARD_COLUMNS
).select_from(
    payment_tokens.join(cards, cards.c.id == payment_tokens.c.card_id).join(
        accounts, accounts.c.id == cards.c.account_id
    )
)


def _token_and_card(values: Sequence[Any]) -> tuple[TokenRecord, CardRecord]:
    """Split one token-and-card row into the token and its card."""
    count = len(_TOKEN_COLUMNS)
    (token_id, card_id, status, expiry, requestor_id, modes, mccs, merchants, last4, last_atc) = values[:count]
    token = TokenRecord(
        token_id=token_id,
        card_id=card_id,
        status=status,
        expiry=expiry,
        requestor_id=requestor_id,
        allowed_entry_modes=_split(modes) or (),
        mcc_allow=_split(mccs),
        merchant_allow=_split(merchants),
        token_last4=last4,
        last_atc=last_atc,
    )
    return token, card_from_values(values[count:])


BY_FINGERPRINT: Lookup[tuple[TokenRecord, CardRecord]] = Lookup(
    "payment token and its card by token fingerprint", _TOKEN_CARD_SELECT, payment_tokens.c.token_fingerprint,
    _token_and_card,
)


async def find_by_fingerprints(
    store: StoreInterface, fingerprints: Sequence[str]
) -> tuple[TokenRecord, CardRecord] | None:
    """The payment token whose fingerprint is one of `fingerprints`, with its card's current state, or None."""
    return await store.lookup(BY_FINGERPRINT, fingerprints)


# ------------------------------------------------------------------ what callers await


async def create(store: StoreInterface, new: NewPaymentToken) -> int:
    """Record a provisioned payment token of an active card (event "provisioned"); its id."""
    return await store.run_write(_create, new)


async def set_status(store: StoreInterface, token_id: int, status: str, detail: str = "") -> None:
    """active <-> suspended, either -> deleted (final); each move is an event."""
    await store.run_write(_set_status, token_id, status, detail)


async def repoint(store: StoreInterface, old_card_id: int, new_card_id: int) -> list[int]:
    """Move the old card's active and suspended tokens to the new card; the moved token ids."""
    return await store.run_write(repoint_tokens, old_card_id, new_card_id)


async def close_and_repoint(store: StoreInterface, old_card_id: int, new_card_id: int) -> list[int]:
    """In one transaction: close the old card, point it at the new one, move its tokens; the moved ids."""
    return await store.run_write(_close_and_repoint, old_card_id, new_card_id)


async def get(store: StoreInterface, token_id: int) -> TokenView:
    """The token (StoreNotFound when there is none)."""
    return await store.run_query(_get, token_id)


async def list_for_card(store: StoreInterface, card_id: int) -> list[TokenView]:
    return await store.run_query(_list_for_card, card_id)


async def events(store: StoreInterface, token_id: int) -> list[dict[str, Any]]:
    """The token's lifecycle events, oldest first: id, event, detail, created_at."""
    return await store.run_query(_events, token_id)


# ------------------------------------------------------------------ inside a transaction


def restriction_list(values: Iterable[str] | None, what: str, digits: int | None) -> tuple[str, ...] | None:
    """A domain restriction's entries (entry modes, MCCs, merchant ids), checked; None means no restriction.

    Each entry is non-empty and without commas (they are stored comma separated) and, with `digits`,
    exactly that many digits; an empty list is refused (give None for "any").
    """
    if values is None:
        return None
    items = tuple(str(value).strip() for value in values)
    for item in items:
        if digits is not None and not (len(item) == digits and item.isdigit()):
            raise InvalidRequest(f"{what}: each entry must be {digits} digits, got {item!r}")
        if not item or "," in item:
            raise InvalidRequest(f"{what}: entries must be non-empty and without commas, got {item!r}")
    if not items:
        raise InvalidRequest(f"{what}: give at least one entry")
    return items


def _split(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v for v in value.split(",") if v)


def _join(values: tuple[str, ...] | None) -> str | None:
    return None if values is None else ",".join(values)


def _record_event(conn: Connection, token_id: int, event: str, detail: str, now: dt.datetime) -> None:
    conn.execute(
        insert(token_events), {"token_id": token_id, "event": event, "detail": detail[:200], "created_at": now}
    )


def _create(conn: Connection, new: NewPaymentToken) -> int:
    if not (len(new.expiry) == 4 and new.expiry.isdigit()):
        raise StoreError(f"payment token expiry must be YYMM, got {new.expiry!r}")
    if not (len(new.token_last4) == 4 and new.token_last4.isdigit()):
        raise StoreError("payment token last4 must be 4 digits")
    modes = _join(restriction_list(new.allowed_entry_modes, "entry modes", 2))
    if modes is None:
        raise InvalidRequest("entry modes: give at least one DE 22 entry mode such as 07")
    mccs = _join(restriction_list(new.mcc_allow, "MCC list", 4))
    merchants_allowed = _join(restriction_list(new.merchant_allow, "merchant list", None))
    status = conn.execute(select(cards.c.status).where(cards.c.id == new.card_id)).scalar()
    if status is None:
        raise StoreNotFound(f"card {new.card_id} does not exist")
    if status != "active":
        raise StoreError(f"card {new.card_id} is {status}: only an active card can get a payment token")
    now = utcnow()
    try:
        with conn.begin_nested():
            token_id = conn.execute(
                insert(payment_tokens).returning(payment_tokens.c.id),
                {
                    "card_id": new.card_id,
                    "token_fingerprint": new.token_fingerprint,
                    "fingerprint_version": new.fingerprint_version,
                    "sealed_token": new.sealed_token,
                    "data_key_version": new.data_key_version,
                    "token_last4": new.token_last4,
                    "token_bin": new.token_bin,
                    "expiry": new.expiry,
                    "status": "active",
                    "requestor_id": new.requestor_id,
                    "wallet": new.wallet,
                    "device_id": new.device_id,
                    "allowed_entry_modes": modes,
                    "mcc_allow": mccs,
                    "merchant_allow": merchants_allowed,
                    "last_atc": None,
                    "created_at": now,
                    "updated_at": now,
                },
            ).scalar_one()
    except IntegrityError:
        raise StoreError("a payment token with this fingerprint already exists") from None
    detail = f"card {new.card_id}, wallet {new.wallet}, device {new.device_id}"
    _record_event(conn, token_id, "provisioned", detail[:200], now)
    return token_id


def _set_status(conn: Connection, token_id: int, status: str, detail: str = "") -> None:
    if status not in TOKEN_STATUSES:
        raise StoreError(f"payment token status must be one of {sorted(TOKEN_STATUSES)}, got {status!r}")
    current = conn.execute(select(payment_tokens.c.status).where(payment_tokens.c.id == token_id)).scalar()
    if current is None:
        raise StoreNotFound(f"payment token {token_id} does not exist")
    event = TOKEN_TRANSITIONS[current].get(status)
    if event is None:
        raise StoreError(f"payment token {token_id} is {current} and cannot become {status}")
    now = utcnow()
    # Compare-and-set on the status read above: two operators acting at once cannot both move it.
    moved = conn.execute(
        update(payment_tokens)
        .where(payment_tokens.c.id == token_id, payment_tokens.c.status == current)
        .values(status=status, updated_at=now)
    ).rowcount
    if moved != 1:
        raise StoreError(f"payment token {token_id} changed status meanwhile; try again")
    _record_event(conn, token_id, event, detail, now)


def repoint_tokens(conn: Connection, old_card_id: int, new_card_id: int) -> list[int]:
    """Move the old card's active and suspended tokens to the new card (event "repointed"); their ids."""
    if conn.execute(select(cards.c.id).where(cards.c.id == new_card_id)).first() is None:
        raise StoreNotFound(f"card {new_card_id} does not exist")
    now = utcnow()
    ids = list(
        conn.execute(
            update(payment_tokens)
            .where(payment_tokens.c.card_id == old_card_id, payment_tokens.c.status.in_(REPOINTABLE))
            .values(card_id=new_card_id, updated_at=now)
            .returning(payment_tokens.c.id)
        ).scalars()
    )
    for token_id in sorted(ids):
        _record_event(conn, token_id, "repointed", f"card {old_card_id} -> card {new_card_id}", now)
    return sorted(ids)


def _close_and_repoint(conn: Connection, old_card_id: int, new_card_id: int) -> list[int]:
    """Close the old card pointing at its replacement and move its wallet tokens to it; the moved token ids."""
    old = conn.execute(
        select(cards.c.status, cards.c.account_id, cards.c.replaced_by_card_id).where(cards.c.id == old_card_id)
    ).first()
    if old is None:
        raise StoreNotFound(f"card {old_card_id} does not exist")
    if old.replaced_by_card_id is not None and old.replaced_by_card_id != new_card_id:
        raise StoreError(f"card {old_card_id} was already replaced by card {old.replaced_by_card_id}")
    new_account = conn.execute(select(cards.c.account_id).where(cards.c.id == new_card_id)).scalar()
    if new_account is None:
        raise StoreNotFound(f"card {new_card_id} does not exist")
    if new_account != old.account_id:
        raise StoreError(f"card {new_card_id} is not on account {old.account_id} of card {old_card_id}")
    # Compare-and-set (re-checked after a row lock on PostgreSQL): of two replacements at once, one wins.
    claimed = conn.execute(
        update(cards)
        .where(
            cards.c.id == old_card_id,
            cards.c.replaced_by_card_id.is_(None) | (cards.c.replaced_by_card_id == new_card_id),
        )
        .values(replaced_by_card_id=new_card_id, updated_at=utcnow())
    ).rowcount
    if claimed != 1:
        raise StoreError(f"card {old_card_id} was replaced by another card meanwhile")
    change_status(conn, old_card_id, "closed")
    return repoint_tokens(conn, old_card_id, new_card_id)


_VIEW_SELECT = select(
    *(
        payment_tokens.c[name]
        for name in (
            "id", "card_id", "status", "expiry", "token_last4", "token_bin", "requestor_id", "wallet", "device_id",
            "allowed_entry_modes", "mcc_allow", "merchant_allow", "fingerprint_version", "data_key_version",
            "last_atc", "created_at", "updated_at",
        )
    )
)


def _token_view(row: Any) -> TokenView:
    values = row._asdict()
    values["allowed_entry_modes"] = _split(values["allowed_entry_modes"]) or ()
    values["mcc_allow"] = _split(values["mcc_allow"])
    values["merchant_allow"] = _split(values["merchant_allow"])
    return TokenView(**values)


def _get(conn: Connection, token_id: int) -> TokenView:
    row = conn.execute(_VIEW_SELECT.where(payment_tokens.c.id == token_id)).first()
    if row is None:
        raise StoreNotFound(f"payment token {token_id} does not exist")
    return _token_view(row)


def _list_for_card(conn: Connection, card_id: int) -> list[TokenView]:
    rows = conn.execute(_VIEW_SELECT.where(payment_tokens.c.card_id == card_id).order_by(payment_tokens.c.id))
    return [_token_view(row) for row in rows]


def _events(conn: Connection, token_id: int) -> list[dict[str, Any]]:
    if conn.execute(select(payment_tokens.c.id).where(payment_tokens.c.id == token_id)).first() is None:
        raise StoreNotFound(f"payment token {token_id} does not exist")
    rows = conn.execute(
        select(token_events.c.id, token_events.c.event, token_events.c.detail, token_events.c.created_at)
        .where(token_events.c.token_id == token_id)
        .order_by(token_events.c.id)
    )
    return [row._asdict() for row in rows]
