"""Operator-side store functions (not on the hot path), synchronous over a Connection inside a transaction."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from processor.ledger.apply import BatchState, internal_account, post_entry
from processor.ledger.models import (
    accounts,
    cardholders,
    cards,
    config,
    holds,
    merchants,
    payment_tokens,
    terminals,
    token_events,
    utcnow,
)
from processor.ledger.records import (
    AccountView,
    CardholderRecord,
    CardRecord,
    HoldView,
    MerchantRecord,
    NewCard,
    NewPaymentToken,
    StoreError,
    StoreNotFound,
    TerminalRecord,
    TokenRecord,
    TokenView,
)

a, c, h = accounts.c, cards.c, holds.c

CUSTOMER_KINDS = frozenset({"checking", "savings"})
CARD_STATUSES = frozenset({"inactive", "active", "frozen", "lost", "stolen", "closed", "expired"})
# Lost, stolen, expired and closed are final apart from closing; a frozen card can come back.
CARD_TRANSITIONS: dict[str, frozenset[str]] = {
    "inactive": frozenset({"active", "closed"}),
    "active": frozenset({"frozen", "lost", "stolen", "closed", "expired"}),
    "frozen": frozenset({"active", "lost", "stolen", "closed", "expired"}),
    "lost": frozenset({"closed"}),
    "stolen": frozenset({"closed"}),
    "expired": frozenset({"closed"}),
    "closed": frozenset(),
}
EXPIRE_CHUNK = 2000


def _state() -> BatchState:
    return BatchState(now=utcnow(), internal_ids={})


def _check_currency(currency: str) -> None:
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()):
        raise StoreError(f"currency must be an ISO 4217 alpha code such as EUR, got {currency!r}")


def create_cardholder(conn: Connection, name: str, handle: str) -> int:
    if not handle or not name:
        raise StoreError("cardholder needs a name and a handle")
    if conn.execute(select(cardholders.c.id).where(cardholders.c.handle == handle)).first() is not None:
        raise StoreError(f"cardholder handle {handle!r} is already taken")
    return conn.execute(
        insert(cardholders).returning(cardholders.c.id), {"name": name, "handle": handle, "created_at": utcnow()}
    ).scalar_one()


def open_account(conn: Connection, cardholder_id: int, kind: str, currency: str) -> int:
    if kind not in CUSTOMER_KINDS:
        raise StoreError(f"account kind must be one of {sorted(CUSTOMER_KINDS)}, got {kind!r}")
    _check_currency(currency)
    if conn.execute(select(cardholders.c.id).where(cardholders.c.id == cardholder_id)).first() is None:
        raise StoreNotFound(f"cardholder {cardholder_id} does not exist")
    st = _state()
    internal_account(conn, st, "funding", currency)
    internal_account(conn, st, "clearing", currency)
    return conn.execute(
        insert(accounts).returning(a.id),
        {
            "cardholder_id": cardholder_id,
            "kind": kind,
            "purpose": None,
            "currency": currency,
            "status": "open",
            "ledger_minor": 0,
            "held_minor": 0,
            "created_at": st.now,
        },
    ).scalar_one()


def _customer_account(conn: Connection, account_id: int) -> Any:
    row = conn.execute(select(a.id, a.kind, a.currency, a.status).where(a.id == account_id)).first()
    if row is None:
        raise StoreNotFound(f"account {account_id} does not exist")
    if row.kind == "internal":
        raise StoreError(f"account {account_id} is an internal account")
    return row


def deposit(conn: Connection, account_id: int, amount_minor: int, reference: str) -> int:
    _positive(amount_minor, "deposit")
    acct = _customer_account(conn, account_id)
    if acct.status == "closed":
        raise StoreError(f"account {account_id} is closed")
    st = _state()
    funding = internal_account(conn, st, "funding", acct.currency)
    entry_id = post_entry(
        conn, st, "deposit", reference, [(funding, -amount_minor), (account_id, amount_minor)], acct.currency
    )
    _lock_accounts(conn, funding, account_id)
    for aid, delta in sorted({funding: -amount_minor, account_id: amount_minor}.items()):
        conn.execute(update(accounts).where(a.id == aid).values(ledger_minor=a.ledger_minor + delta))
    return entry_id


def _lock_accounts(conn: Connection, *account_ids: int) -> None:
    """PostgreSQL: lock the rows in id order (as the hot path does) before changing several of them."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(a.id).where(a.id.in_(sorted(set(account_ids)))).order_by(a.id).with_for_update())


def _take(conn: Connection, account_id: int, amount_minor: int, what: str) -> None:
    """Debit `amount_minor` only if the account is open and has it available (one conditional UPDATE)."""
    row = conn.execute(
        update(accounts)
        .where(a.id == account_id, a.status == "open", a.ledger_minor - a.held_minor >= amount_minor)
        .values(ledger_minor=a.ledger_minor - amount_minor)
        .returning(a.id)
    ).first()
    if row is None:
        acct = conn.execute(select(a.status, a.ledger_minor, a.held_minor).where(a.id == account_id)).one()
        if acct.status != "open":
            raise StoreError(f"{what}: account {account_id} is {acct.status}")
        raise StoreError(
            f"{what}: insufficient funds in account {account_id} "
            f"(available {acct.ledger_minor - acct.held_minor}, needed {amount_minor})"
        )


def _positive(amount_minor: int, what: str) -> None:
    if not isinstance(amount_minor, int) or isinstance(amount_minor, bool) or amount_minor <= 0:
        raise StoreError(f"{what} amount must be a positive integer of minor units, got {amount_minor!r}")


def transfer(
    conn: Connection, from_account_id: int, to_account_id: int, amount_minor: int, reference: str, kind: str
) -> int:
    _positive(amount_minor, kind)
    if from_account_id == to_account_id:
        raise StoreError(f"{kind}: source and destination are the same account {from_account_id}")
    source = _customer_account(conn, from_account_id)
    target = _customer_account(conn, to_account_id)
    if source.currency != target.currency:
        raise StoreError(
            f"{kind}: account {from_account_id} is in {source.currency}, account {to_account_id} in {target.currency}"
        )
    if target.status == "closed":
        raise StoreError(f"{kind}: account {to_account_id} is closed")
    _lock_accounts(conn, from_account_id, to_account_id)
    _take(conn, from_account_id, amount_minor, kind)
    conn.execute(update(accounts).where(a.id == to_account_id).values(ledger_minor=a.ledger_minor + amount_minor))
    return post_entry(
        conn, _state(), kind, reference, [(from_account_id, -amount_minor), (to_account_id, amount_minor)],
        source.currency,
    )


def post_adjustment(
    conn: Connection, account_id: int, amount_minor: int, purpose: str, kind: str, reference: str
) -> int:
    """Positive: the internal `purpose` account pays the customer (interest); negative: the customer pays it (fee)."""
    if not isinstance(amount_minor, int) or amount_minor == 0:
        raise StoreError(f"{kind} amount must be a non-zero integer of minor units, got {amount_minor!r}")
    if purpose in ("", "funding", "clearing") or not purpose.isidentifier():
        raise StoreError(f"{kind}: internal purpose {purpose!r} must be a word other than funding or clearing")
    acct = _customer_account(conn, account_id)
    st = _state()
    internal = internal_account(conn, st, purpose, acct.currency)
    _lock_accounts(conn, account_id, internal)
    if amount_minor < 0:
        _take(conn, account_id, -amount_minor, kind)
    else:
        if acct.status == "closed":
            raise StoreError(f"{kind}: account {account_id} is closed")
        conn.execute(update(accounts).where(a.id == account_id).values(ledger_minor=a.ledger_minor + amount_minor))
    conn.execute(update(accounts).where(a.id == internal).values(ledger_minor=a.ledger_minor - amount_minor))
    return post_entry(conn, st, kind, reference, [(internal, -amount_minor), (account_id, amount_minor)], acct.currency)


def find_cardholder(conn: Connection, handle: str) -> CardholderRecord | None:
    ch = cardholders.c
    row = conn.execute(select(ch.id, ch.name, ch.handle, ch.created_at).where(ch.handle == handle)).first()
    return CardholderRecord(**row._asdict()) if row is not None else None


def list_accounts(conn: Connection, cardholder_id: int) -> list[AccountView]:
    ids = conn.execute(select(a.id).where(a.cardholder_id == cardholder_id).order_by(a.id)).scalars().all()
    return [account_view(conn, account_id) for account_id in ids]


def set_account_status(conn: Connection, account_id: int, status: str) -> None:
    if status not in ("open", "frozen", "closed"):
        raise StoreError(f"account status must be open, frozen or closed, got {status!r}")
    acct = _customer_account(conn, account_id)
    if acct.status == "closed" and status != "closed":
        raise StoreError(f"account {account_id} is closed and cannot be reopened")
    conn.execute(update(accounts).where(a.id == account_id).values(status=status))


def create_card(conn: Connection, new: NewCard) -> int:
    if new.status not in CARD_STATUSES:
        raise StoreError(f"card status must be one of {sorted(CARD_STATUSES)}, got {new.status!r}")
    if not (len(new.expiry) == 4 and new.expiry.isdigit()):
        raise StoreError(f"card expiry must be YYMM, got {new.expiry!r}")
    _customer_account(conn, new.account_id)
    taken = conn.execute(
        select(c.id).where((c.token == new.token) | (c.pan_fingerprint == new.pan_fingerprint))
    ).first()
    if taken is not None:
        raise StoreError("a card with this token or PAN fingerprint already exists")
    now = utcnow()
    try:
        with conn.begin_nested():
            card_id = conn.execute(
                insert(cards).returning(c.id),
                {
                    "account_id": new.account_id,
                    "status": new.status,
                    "product": new.product,
                    "token": new.token,
                    "last4": new.last4,
                    "pan_fingerprint": new.pan_fingerprint,
                    "fingerprint_version": new.fingerprint_version,
                    "sealed_pan": new.sealed_pan,
                    "data_key_version": new.data_key_version,
                    "expiry": new.expiry,
                    "service_code": new.service_code,
                    "psn": new.psn,
                    "pin_method": new.pin_method,
                    "pin_value": new.pin_value,
                    "pin_tries": 0,
                    "created_at": now,
                    "updated_at": now,
                    "replaced_by_card_id": None,
                },
            ).scalar_one()
    except IntegrityError:
        raise StoreError("a card with this token or PAN fingerprint already exists") from None
    if new.replaced_card_id is not None:
        conn.execute(
            update(cards).where(c.id == new.replaced_card_id).values(replaced_by_card_id=card_id, updated_at=now)
        )
    return card_id


def set_card_status(conn: Connection, card_id: int, status: str, detail: dict[str, Any] | None = None) -> None:
    """Move a card to `status` if its lifecycle allows; the cardholder's feed gets a `card.status` event."""
    if status not in CARD_STATUSES:
        raise StoreError(f"card status must be one of {sorted(CARD_STATUSES)}, got {status!r}")
    current = conn.execute(select(c.status).where(c.id == card_id)).scalar()
    if current is None:
        raise StoreNotFound(f"card {card_id} does not exist")
    if status == current:
        return
    if status not in CARD_TRANSITIONS[current]:
        raise StoreError(f"card {card_id} is {current} and cannot become {status}")
    now = utcnow()
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if current == "inactive" and status == "active":
        values["pin_tries"] = 0
    conn.execute(update(cards).where(c.id == card_id).values(values))
    # (imported here: processor.events reads the ledger's models, so the ledger package must load first)
    from processor.events.outbox import cardholder_event, write_events

    holder = conn.execute(select(a.cardholder_id, c.last4).join(accounts, a.id == c.account_id).where(c.id == card_id)).one()
    data = {"card_id": card_id, "status": status, "previous_status": current, "last4": holder.last4, **(detail or {})}
    write_events(conn, [cardholder_event(holder.cardholder_id, "card.status", data, now)])


def reset_pin_tries(conn: Connection, card_id: int) -> None:
    if conn.execute(update(cards).where(c.id == card_id).values(pin_tries=0, updated_at=utcnow())).rowcount != 1:
        raise StoreNotFound(f"card {card_id} does not exist")


CARD_COLUMNS = (
    c.id.label("card_id"), c.account_id, c.status, c.product, c.token, c.last4, c.pan_fingerprint,
    c.fingerprint_version, c.sealed_pan, c.data_key_version, c.expiry, c.service_code, c.psn, c.pin_method,
    c.pin_value, c.pin_tries, c.replaced_by_card_id, a.status.label("account_status"), a.currency, c.last_atc,
)
CARD_SELECT = select(*CARD_COLUMNS).join(accounts, a.id == c.account_id)


def card_record(row: Any) -> CardRecord:
    return CardRecord(**row._asdict())


def get_card(conn: Connection, card_id: int) -> CardRecord:
    row = conn.execute(CARD_SELECT.where(c.id == card_id)).first()
    if row is None:
        raise StoreNotFound(f"card {card_id} does not exist")
    return card_record(row)


def list_cards(conn: Connection, account_id: int) -> list[CardRecord]:
    return [card_record(r) for r in conn.execute(CARD_SELECT.where(c.account_id == account_id).order_by(c.id))]


def add_merchant(conn: Connection, merchant_id: str, name: str, location: str, mcc: str) -> int:
    if not (len(mcc) == 4 and mcc.isdigit()):
        raise StoreError(f"MCC must be 4 digits, got {mcc!r}")
    if conn.execute(select(merchants.c.id).where(merchants.c.merchant_id == merchant_id)).first() is not None:
        raise StoreError(f"merchant {merchant_id!r} already exists")
    return conn.execute(
        insert(merchants).returning(merchants.c.id),
        {"merchant_id": merchant_id, "name": name, "location": location, "mcc": mcc},
    ).scalar_one()


def get_merchant(conn: Connection, merchant_id: str) -> MerchantRecord | None:
    m = merchants.c
    row = conn.execute(select(m.id, m.merchant_id, m.name, m.location, m.mcc).where(m.merchant_id == merchant_id)).first()
    return MerchantRecord(**row._asdict()) if row is not None else None


def add_terminal(
    conn: Connection,
    terminal_id: str,
    merchant_id: str,
    key_scheme: str | None,
    bdk_kcv: str | None,
    initial_ksn: str | None,
    status: str,
    chip_capable: bool = True,
) -> int:
    merchant_row = conn.execute(select(merchants.c.id).where(merchants.c.merchant_id == merchant_id)).scalar()
    if merchant_row is None:
        raise StoreNotFound(f"merchant {merchant_id!r} does not exist; add it first")
    if conn.execute(select(terminals.c.id).where(terminals.c.terminal_id == terminal_id)).first() is not None:
        raise StoreError(f"terminal {terminal_id!r} already exists")
    return conn.execute(
        insert(terminals).returning(terminals.c.id),
        {
            "terminal_id": terminal_id,
            "merchant_id": merchant_row,
            "status": status,
            "key_scheme": key_scheme,
            "bdk_kcv": bdk_kcv,
            "initial_ksn": initial_ksn,
            "chip_capable": chip_capable,
            "created_at": utcnow(),
        },
    ).scalar_one()


def set_terminal_status(conn: Connection, terminal_id: str, status: str) -> None:
    if status not in ("active", "inactive", "blocked"):
        raise StoreError(f"terminal status must be active, inactive or blocked, got {status!r}")
    t = terminals.c
    if conn.execute(update(terminals).where(t.terminal_id == terminal_id).values(status=status)).rowcount != 1:
        raise StoreNotFound(f"terminal {terminal_id!r} does not exist")


TERMINAL_SELECT = select(
    terminals.c.id,
    terminals.c.terminal_id,
    merchants.c.merchant_id,
    merchants.c.name.label("merchant_name"),
    merchants.c.mcc,
    terminals.c.status,
    terminals.c.key_scheme,
    terminals.c.bdk_kcv,
    terminals.c.initial_ksn,
    terminals.c.chip_capable,
).join(merchants, merchants.c.id == terminals.c.merchant_id)


def get_terminal(conn: Connection, terminal_id: str) -> TerminalRecord | None:
    row = conn.execute(TERMINAL_SELECT.where(terminals.c.terminal_id == terminal_id)).first()
    return TerminalRecord(**row._asdict()) if row is not None else None


def list_terminals(conn: Connection, limit: int) -> list[TerminalRecord]:
    rows = conn.execute(TERMINAL_SELECT.order_by(terminals.c.terminal_id).limit(limit))
    return [TerminalRecord(**row._asdict()) for row in rows]


def account_view(conn: Connection, account_id: int) -> AccountView:
    row = conn.execute(
        select(a.id, a.cardholder_id, a.kind, a.purpose, a.currency, a.status, a.ledger_minor, a.held_minor).where(
            a.id == account_id
        )
    ).first()
    if row is None:
        raise StoreNotFound(f"account {account_id} does not exist")
    hold_rows = conn.execute(
        select(
            h.id, h.account_id, h.card_id, h.amount_minor, h.currency, h.status, h.expires_at, h.created_at,
            h.captured_minor, h.forced,
        )
        .where(h.account_id == account_id, h.status == "active")
        .order_by(h.id)
    )
    return AccountView(
        id=row.id,
        cardholder_id=row.cardholder_id,
        kind=row.kind,
        purpose=row.purpose,
        currency=row.currency,
        status=row.status,
        ledger_minor=row.ledger_minor,
        held_minor=row.held_minor,
        available_minor=row.ledger_minor - row.held_minor,
        holds=[HoldView(**r._asdict()) for r in hold_rows],
    )


def expire_holds(conn: Connection, now: dt.datetime) -> int:
    """Close active holds whose expiry has passed and release their amounts (in chunks, one transaction)."""
    total = 0
    while True:
        due = conn.execute(
            select(h.id, h.account_id).where(h.status == "active", h.expires_at <= now).order_by(h.id).limit(EXPIRE_CHUNK)
        ).all()
        if not due:
            return total
        ids = [r.id for r in due]
        if conn.dialect.name == "postgresql":
            # Accounts before holds, in id order, as the hot path locks them: no deadlock with its batches.
            account_ids = sorted({r.account_id for r in due})
            conn.execute(select(a.id).where(a.id.in_(account_ids)).order_by(a.id).with_for_update())
        released: defaultdict[int, int] = defaultdict(int)
        for r in conn.execute(
            update(holds)
            .where(h.id.in_(ids), h.status == "active")
            .values(status="expired", closed_at=now)
            .returning(h.account_id, h.amount_minor)
        ):
            released[r.account_id] += r.amount_minor
            total += 1
        for aid, amount in sorted(released.items()):
            conn.execute(update(accounts).where(a.id == aid).values(held_minor=a.held_minor - amount))
        if len(ids) < EXPIRE_CHUNK:
            return total


def get_config(conn: Connection, key: str) -> str | None:
    return conn.execute(select(config.c.value).where(config.c.key == key)).scalar()


def set_config(conn: Connection, key: str, value: str) -> None:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    stmt = upsert(config).values(key=key, value=value)
    conn.execute(stmt.on_conflict_do_update(index_elements=[config.c.key], set_={"value": value}))


# ------------------------------------------------------------------ PAN vault rotation


def cards_to_reseal(
    conn: Connection, dek_version: int, fpk_version: int, after_id: int, limit: int
) -> list[tuple[int, str, int, int]]:
    """(card_id, sealed_pan, data_key_version, fingerprint_version) of cards behind either key version, by id."""
    rows = conn.execute(
        select(c.id, c.sealed_pan, c.data_key_version, c.fingerprint_version)
        .where(c.id > after_id, (c.data_key_version < dek_version) | (c.fingerprint_version < fpk_version))
        .order_by(c.id)
        .limit(limit)
    )
    return [(r.id, r.sealed_pan, r.data_key_version, r.fingerprint_version) for r in rows]


def update_card_vault(
    conn: Connection, card_id: int, old_dek_version: int, old_fpk_version: int, vault: Any
) -> bool:
    """Store a re-sealed PAN only if the card still has the versions it was read with (compare-and-set)."""
    result = conn.execute(
        update(cards)
        .where(c.id == card_id, c.data_key_version == old_dek_version, c.fingerprint_version == old_fpk_version)
        .values(
            pan_fingerprint=vault.fingerprint,
            fingerprint_version=vault.fingerprint_version,
            sealed_pan=vault.sealed_pan,
            data_key_version=vault.data_key_version,
            updated_at=utcnow(),
        )
    )
    return result.rowcount == 1


def update_cards_vault(conn: Connection, updates: Sequence[tuple[int, int, int, Any]]) -> list[bool]:
    """update_card_vault for each (card_id, old_dek_version, old_fpk_version, vault), in one transaction."""
    return [update_card_vault(conn, *item) for item in updates]


def tokens_to_reseal(
    conn: Connection, dek_version: int, fpk_version: int, after_id: int, limit: int
) -> list[tuple[int, str, int, int]]:
    """(token_id, sealed_token, data_key_version, fingerprint_version) of payment tokens behind a version, by id."""
    p = payment_tokens.c
    rows = conn.execute(
        select(p.id, p.sealed_token, p.data_key_version, p.fingerprint_version)
        .where(p.id > after_id, (p.data_key_version < dek_version) | (p.fingerprint_version < fpk_version))
        .order_by(p.id)
        .limit(limit)
    )
    return [(r.id, r.sealed_token, r.data_key_version, r.fingerprint_version) for r in rows]


def update_tokens_vault(conn: Connection, updates: Sequence[tuple[int, int, int, Any]]) -> list[bool]:
    """Store re-sealed token numbers, each with a compare-and-set on the versions it was read with."""
    p = payment_tokens.c
    now = utcnow()
    done = []
    for token_id, old_dek, old_fpk, vault in updates:
        result = conn.execute(
            update(payment_tokens)
            .where(p.id == token_id, p.data_key_version == old_dek, p.fingerprint_version == old_fpk)
            .values(
                token_fingerprint=vault.fingerprint,
                fingerprint_version=vault.fingerprint_version,
                sealed_token=vault.sealed_pan,
                data_key_version=vault.data_key_version,
                updated_at=now,
            )
        )
        done.append(result.rowcount == 1)
    return done


def count_behind_vault(conn: Connection, dek_version: int, fpk_version: int) -> int:
    """Cards plus payment tokens still sealed or fingerprinted under an older key version."""
    p = payment_tokens.c
    behind_cards = conn.execute(
        select(func.count()).select_from(cards).where(
            (c.data_key_version < dek_version) | (c.fingerprint_version < fpk_version)
        )
    ).scalar_one()
    behind_tokens = conn.execute(
        select(func.count()).select_from(payment_tokens).where(
            (p.data_key_version < dek_version) | (p.fingerprint_version < fpk_version)
        )
    ).scalar_one()
    return int(behind_cards) + int(behind_tokens)


# ------------------------------------------------------------------ payment tokens

tk = payment_tokens.c
TOKEN_STATUSES = frozenset({"active", "suspended", "deleted"})
# Deleted is final; a suspended token can come back.
TOKEN_TRANSITIONS: dict[str, dict[str, str]] = {
    "active": {"suspended": "suspended", "deleted": "deleted"},
    "suspended": {"active": "resumed", "deleted": "deleted"},
    "deleted": {},
}
# A token whose card is replaced follows the new card; a deleted one stays with the old card.
REPOINTABLE = ("active", "suspended")


def _split(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v for v in value.split(",") if v)


def _join(values: Any, what: str, digits: int | None) -> str | None:
    if values is None:
        return None
    items = tuple(values)
    for item in items:
        if not item or "," in item or (digits is not None and not (len(item) == digits and item.isdigit())):
            expected = f"{digits} digits" if digits else "a non-empty value without commas"
            raise StoreError(f"payment token {what}: each entry must be {expected}, got {item!r}")
    if not items:
        raise StoreError(f"payment token {what}: give at least one entry, or none for no restriction")
    return ",".join(items)


def _event(conn: Connection, token_id: int, event: str, detail: str, now: dt.datetime) -> None:
    conn.execute(insert(token_events), {"token_id": token_id, "event": event, "detail": detail[:200], "created_at": now})


def add_payment_token(conn: Connection, new: NewPaymentToken) -> int:
    if not (len(new.expiry) == 4 and new.expiry.isdigit()):
        raise StoreError(f"payment token expiry must be YYMM, got {new.expiry!r}")
    if not (len(new.token_last4) == 4 and new.token_last4.isdigit()):
        raise StoreError("payment token last4 must be 4 digits")
    modes = _join(new.allowed_entry_modes, "entry modes", 2)
    if modes is None:
        raise StoreError("payment token entry modes: give at least one DE 22 entry mode such as 07")
    mccs = _join(new.mcc_allow, "MCC list", 4)
    merchants_allowed = _join(new.merchant_allow, "merchant list", None)
    status = conn.execute(select(c.status).where(c.id == new.card_id)).scalar()
    if status is None:
        raise StoreNotFound(f"card {new.card_id} does not exist")
    if status != "active":
        raise StoreError(f"card {new.card_id} is {status}: only an active card can get a payment token")
    now = utcnow()
    try:
        with conn.begin_nested():
            token_id = conn.execute(
                insert(payment_tokens).returning(tk.id),
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
    _event(conn, token_id, "provisioned", f"card {new.card_id}, wallet {new.wallet}, device {new.device_id}"[:200], now)
    return token_id


def set_token_status(conn: Connection, token_id: int, status: str, detail: str = "") -> None:
    if status not in TOKEN_STATUSES:
        raise StoreError(f"payment token status must be one of {sorted(TOKEN_STATUSES)}, got {status!r}")
    current = conn.execute(select(tk.status).where(tk.id == token_id)).scalar()
    if current is None:
        raise StoreNotFound(f"payment token {token_id} does not exist")
    event = TOKEN_TRANSITIONS[current].get(status)
    if event is None:
        raise StoreError(f"payment token {token_id} is {current} and cannot become {status}")
    now = utcnow()
    # Compare-and-set on the status read above: two operators acting at once cannot both move it.
    moved = conn.execute(
        update(payment_tokens).where(tk.id == token_id, tk.status == current).values(status=status, updated_at=now)
    ).rowcount
    if moved != 1:
        raise StoreError(f"payment token {token_id} changed status meanwhile; try again")
    _event(conn, token_id, event, detail, now)


def repoint_tokens(conn: Connection, old_card_id: int, new_card_id: int) -> list[int]:
    """Move the old card's active and suspended tokens to the new card (event "repointed"); their ids."""
    if conn.execute(select(c.id).where(c.id == new_card_id)).first() is None:
        raise StoreNotFound(f"card {new_card_id} does not exist")
    now = utcnow()
    ids = list(
        conn.execute(
            update(payment_tokens)
            .where(tk.card_id == old_card_id, tk.status.in_(REPOINTABLE))
            .values(card_id=new_card_id, updated_at=now)
            .returning(tk.id)
        ).scalars()
    )
    for token_id in sorted(ids):
        _event(conn, token_id, "repointed", f"card {old_card_id} -> card {new_card_id}", now)
    return sorted(ids)


def replace_card(conn: Connection, old_card_id: int, new_card_id: int) -> list[int]:
    """Close the old card pointing at its replacement and move its wallet tokens to it; the moved token ids."""
    old = conn.execute(select(c.status, c.account_id, c.replaced_by_card_id).where(c.id == old_card_id)).first()
    if old is None:
        raise StoreNotFound(f"card {old_card_id} does not exist")
    if old.replaced_by_card_id is not None and old.replaced_by_card_id != new_card_id:
        raise StoreError(f"card {old_card_id} was already replaced by card {old.replaced_by_card_id}")
    new_account = conn.execute(select(c.account_id).where(c.id == new_card_id)).scalar()
    if new_account is None:
        raise StoreNotFound(f"card {new_card_id} does not exist")
    if new_account != old.account_id:
        raise StoreError(f"card {new_card_id} is not on account {old.account_id} of card {old_card_id}")
    # Compare-and-set (re-checked after a row lock on PostgreSQL): of two replacements at once, one wins.
    claimed = conn.execute(
        update(cards)
        .where(c.id == old_card_id, c.replaced_by_card_id.is_(None) | (c.replaced_by_card_id == new_card_id))
        .values(replaced_by_card_id=new_card_id, updated_at=utcnow())
    ).rowcount
    if claimed != 1:
        raise StoreError(f"card {old_card_id} was replaced by another card meanwhile")
    set_card_status(conn, old_card_id, "closed")
    return repoint_tokens(conn, old_card_id, new_card_id)


TOKEN_COLUMNS = (
    tk.id.label("token_id"), tk.card_id, tk.status, tk.expiry, tk.requestor_id, tk.allowed_entry_modes, tk.mcc_allow,
    tk.merchant_allow, tk.token_last4, tk.last_atc,
)
# One row: the token, its card and the card's account (the card columns keep CARD_COLUMNS' names).
TOKEN_CARD_SELECT = select(
    *(col.label(f"t_{col.name}") for col in TOKEN_COLUMNS), *CARD_COLUMNS
).select_from(payment_tokens.join(cards, c.id == tk.card_id).join(accounts, a.id == c.account_id))
TOKEN_CARD_NAMES = tuple(f"t_{col.name}" for col in TOKEN_COLUMNS) + tuple(col.name for col in CARD_COLUMNS)


def token_card_from_values(values: Sequence[Any]) -> tuple[TokenRecord, CardRecord]:
    """Split one TOKEN_CARD_SELECT row (in TOKEN_CARD_NAMES order) into the token and its card."""
    n = len(TOKEN_COLUMNS)
    tv = dict(zip((col.name for col in TOKEN_COLUMNS), values[:n]))
    token = TokenRecord(
        token_id=tv["token_id"],
        card_id=tv["card_id"],
        status=tv["status"],
        expiry=tv["expiry"],
        requestor_id=tv["requestor_id"],
        allowed_entry_modes=_split(tv["allowed_entry_modes"]) or (),
        mcc_allow=_split(tv["mcc_allow"]),
        merchant_allow=_split(tv["merchant_allow"]),
        token_last4=tv["token_last4"],
        last_atc=tv["last_atc"],
    )
    card = CardRecord(**dict(zip((col.name for col in CARD_COLUMNS), values[n:])))
    return token, card


def find_payment_token(conn: Connection, fingerprints: list[str]) -> tuple[TokenRecord, CardRecord] | None:
    row = conn.execute(TOKEN_CARD_SELECT.where(tk.token_fingerprint.in_(fingerprints)).limit(1)).first()
    return token_card_from_values(tuple(row)) if row is not None else None


_TOKEN_VIEW = select(
    tk.id, tk.card_id, tk.status, tk.expiry, tk.token_last4, tk.token_bin, tk.requestor_id, tk.wallet, tk.device_id,
    tk.allowed_entry_modes, tk.mcc_allow, tk.merchant_allow, tk.fingerprint_version, tk.data_key_version, tk.last_atc,
    tk.created_at, tk.updated_at,
)


def _token_view(row: Any) -> TokenView:
    values = row._asdict()
    values["allowed_entry_modes"] = _split(values["allowed_entry_modes"]) or ()
    values["mcc_allow"] = _split(values["mcc_allow"])
    values["merchant_allow"] = _split(values["merchant_allow"])
    return TokenView(**values)


def get_token(conn: Connection, token_id: int) -> TokenView:
    row = conn.execute(_TOKEN_VIEW.where(tk.id == token_id)).first()
    if row is None:
        raise StoreNotFound(f"payment token {token_id} does not exist")
    return _token_view(row)


def list_tokens(conn: Connection, card_id: int) -> list[TokenView]:
    return [_token_view(r) for r in conn.execute(_TOKEN_VIEW.where(tk.card_id == card_id).order_by(tk.id))]


def list_token_events(conn: Connection, token_id: int) -> list[dict[str, Any]]:
    e = token_events.c
    if conn.execute(select(tk.id).where(tk.id == token_id)).first() is None:
        raise StoreNotFound(f"payment token {token_id} does not exist")
    rows = conn.execute(select(e.id, e.event, e.detail, e.created_at).where(e.token_id == token_id).order_by(e.id))
    return [r._asdict() for r in rows]
