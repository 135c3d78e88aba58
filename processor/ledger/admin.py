"""Operator-side store functions (not on the hot path), synchronous over a Connection inside a transaction."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from processor.ledger.apply import BatchState, internal_account, post_entry
from processor.ledger.models import accounts, cardholders, cards, config, holds, merchants, terminals, utcnow
from processor.ledger.records import (
    AccountView,
    CardholderRecord,
    CardRecord,
    HoldView,
    MerchantRecord,
    NewCard,
    StoreError,
    StoreNotFound,
    TerminalRecord,
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


def set_card_status(conn: Connection, card_id: int, status: str) -> None:
    if status not in CARD_STATUSES:
        raise StoreError(f"card status must be one of {sorted(CARD_STATUSES)}, got {status!r}")
    current = conn.execute(select(c.status).where(c.id == card_id)).scalar()
    if current is None:
        raise StoreNotFound(f"card {card_id} does not exist")
    if status == current:
        return
    if status not in CARD_TRANSITIONS[current]:
        raise StoreError(f"card {card_id} is {current} and cannot become {status}")
    values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
    if current == "inactive" and status == "active":
        values["pin_tries"] = 0
    conn.execute(update(cards).where(c.id == card_id).values(values))


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
).join(merchants, merchants.c.id == terminals.c.merchant_id)


def get_terminal(conn: Connection, terminal_id: str) -> TerminalRecord | None:
    row = conn.execute(TERMINAL_SELECT.where(terminals.c.terminal_id == terminal_id)).first()
    return TerminalRecord(**row._asdict()) if row is not None else None


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
