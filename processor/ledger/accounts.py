"""Accounts and their money: opening, deposits, transfers, interest and fees, status, balances.

Every change of a balance is a balanced journal entry (`apply.post_entry`) written in the same transaction
as the accounts' `ledger_minor`/`held_minor` columns; available = ledger - active holds. Each customer
account's currency has two internal accounts: `funding` (where deposits come from) and `clearing` (where
card payments go), created with the first account of that currency.

    account_id = await accounts.open_account(store, cardholder_id, "checking", "EUR")
    await accounts.deposit(store, account_id, 100_00, reference="salary")
    view = await accounts.get(store, account_id)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, update

from processor.ledger.apply import BatchState, insert_account, internal_account, post_entry
from processor.ledger.errors import StoreError, StoreNotFound
from processor.ledger.holds import HoldView, active_holds
from processor.ledger.interface import StoreInterface
from processor.ledger.models import accounts, cardholders, utcnow

CUSTOMER_KINDS = frozenset({"checking", "savings"})
ACCOUNT_STATUSES = ("open", "frozen", "closed")


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account's balances: available = ledger - active holds."""

    id: int
    cardholder_id: int | None
    kind: str
    purpose: str | None
    currency: str
    status: str
    ledger_minor: int
    held_minor: int
    available_minor: int
    holds: list[HoldView] = field(default_factory=list)


# ------------------------------------------------------------------ what callers await


async def open_account(
    store: StoreInterface, cardholder_id: int, kind: str, currency: str, *, deposit_minor: int = 0, reference: str = "opening deposit"
) -> int:
    """A customer account, with its opening deposit in the same transaction; the funding and clearing accounts
    of `currency` are created when missing."""
    return await store.run_write(add_account, cardholder_id, kind, currency, deposit_minor, reference)


async def deposit(store: StoreInterface, account_id: int, amount_minor: int, *, reference: str) -> int:
    """Move `amount_minor` from the currency's funding account to the account; returns the journal entry id."""
    return await store.run_write(post_deposit, account_id, amount_minor, reference)


async def transfer(
    store: StoreInterface,
    from_account_id: int,
    to_account_id: int,
    amount_minor: int,
    *,
    reference: str,
    kind: str = "transfer",
) -> int:
    """Move money between two customer accounts of one currency if the source has it available; entry id."""
    return await store.run_write(_transfer, from_account_id, to_account_id, amount_minor, reference, kind)


async def post_adjustment(
    store: StoreInterface, account_id: int, amount_minor: int, *, purpose: str, kind: str, reference: str
) -> int:
    """Interest (amount > 0, paid by the internal `purpose` account) or a fee (amount < 0, paid to it); entry id."""
    return await store.run_write(_post_adjustment, account_id, amount_minor, purpose, kind, reference)


async def set_status(store: StoreInterface, account_id: int, status: str) -> None:
    """open, frozen or closed; a closed account stays closed."""
    await store.run_write(_set_status, account_id, status)


async def get(store: StoreInterface, account_id: int) -> AccountView:
    """Balances and active holds of an account (StoreNotFound when there is none)."""
    return await store.run_query(view, account_id)


async def list_accounts(store: StoreInterface, *, cardholder_id: int | None = None, internal: bool = False) -> list[AccountView]:
    """Customer accounts (of one cardholder), or the internal ones; oldest first, without their holds."""
    return await store.run_query(_list_accounts, cardholder_id, internal)


async def list_for_cardholder(store: StoreInterface, cardholder_id: int) -> list[AccountView]:
    """The cardholder's accounts, oldest first."""
    return await store.run_query(_list_for_cardholder, cardholder_id)


# ------------------------------------------------------------------ inside a transaction


def _new_state() -> BatchState:
    return BatchState(now=utcnow(), internal_ids={})


def check_currency(currency: str) -> None:
    """Refuse anything but an ISO 4217 alpha code."""
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()):
        raise StoreError(f"currency must be an ISO 4217 alpha code such as EUR, got {currency!r}")


def customer_account(conn: Connection, account_id: int) -> Any:
    """The account's (id, kind, currency, status) row; refused when it is missing or internal."""
    row = conn.execute(
        select(accounts.c.id, accounts.c.kind, accounts.c.currency, accounts.c.status).where(accounts.c.id == account_id)
    ).first()
    if row is None:
        raise StoreNotFound(f"account {account_id} does not exist")
    if row.kind == "internal":
        raise StoreError(f"account {account_id} is an internal account")
    return row


def lock_accounts(conn: Connection, *account_ids: int) -> None:
    """PostgreSQL: lock the rows in id order (as the hot path does) before changing several of them."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            select(accounts.c.id)
            .where(accounts.c.id.in_(sorted(set(account_ids))))
            .order_by(accounts.c.id)
            .with_for_update()
        )


def add_account(
    conn: Connection, cardholder_id: int, kind: str, currency: str, deposit_minor: int = 0, reference: str = "opening deposit"
) -> int:
    """`open_account` inside the caller's transaction: the new account's id."""
    if deposit_minor < 0:
        raise StoreError(f"an opening deposit cannot be negative, got {deposit_minor}")
    if kind not in CUSTOMER_KINDS:
        raise StoreError(f"account kind must be one of {sorted(CUSTOMER_KINDS)}, got {kind!r}")
    check_currency(currency)
    # The account's owner must exist (the foreign key would refuse it too, with a less useful message).
    if conn.execute(select(cardholders.c.id).where(cardholders.c.id == cardholder_id)).first() is None:
        raise StoreNotFound(f"cardholder {cardholder_id} does not exist")
    state = _new_state()
    internal_account(conn, state, "funding", currency)
    internal_account(conn, state, "clearing", currency)
    account_id = insert_account(conn, cardholder_id, kind, None, currency, state.now)
    if deposit_minor:
        post_deposit(conn, account_id, deposit_minor, reference)
    return account_id


def _positive(amount_minor: int, what: str) -> None:
    if not isinstance(amount_minor, int) or isinstance(amount_minor, bool) or amount_minor <= 0:
        raise StoreError(f"{what} amount must be a positive integer of minor units, got {amount_minor!r}")


def _add_to_ledger(conn: Connection, account_id: int, amount_minor: int) -> None:
    conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id)
        .values(ledger_minor=accounts.c.ledger_minor + amount_minor)
    )


def _take(conn: Connection, account_id: int, amount_minor: int, what: str) -> None:
    """Debit `amount_minor` only if the account is open and has it available (one conditional UPDATE)."""
    row = conn.execute(
        update(accounts)
        .where(
            accounts.c.id == account_id,
            accounts.c.status == "open",
            accounts.c.ledger_minor - accounts.c.held_minor >= amount_minor,
        )
        .values(ledger_minor=accounts.c.ledger_minor - amount_minor)
        .returning(accounts.c.id)
    ).first()
    if row is None:
        account = conn.execute(
            select(accounts.c.status, accounts.c.ledger_minor, accounts.c.held_minor).where(accounts.c.id == account_id)
        ).one()
        if account.status != "open":
            raise StoreError(f"{what}: account {account_id} is {account.status}")
        raise StoreError(
            f"{what}: insufficient funds in account {account_id} "
            f"(available {account.ledger_minor - account.held_minor}, needed {amount_minor})"
        )


def post_deposit(conn: Connection, account_id: int, amount_minor: int, reference: str) -> int:
    """`deposit` inside the caller's transaction: the journal entry id."""
    _positive(amount_minor, "deposit")
    account = customer_account(conn, account_id)
    if account.status == "closed":
        raise StoreError(f"account {account_id} is closed")
    state = _new_state()
    funding = internal_account(conn, state, "funding", account.currency)
    entry_id = post_entry(
        conn, state, "deposit", reference, [(funding, -amount_minor), (account_id, amount_minor)], account.currency
    )
    lock_accounts(conn, funding, account_id)
    for changed_id, delta in sorted({funding: -amount_minor, account_id: amount_minor}.items()):
        _add_to_ledger(conn, changed_id, delta)
    return entry_id


def _transfer(
    conn: Connection, from_account_id: int, to_account_id: int, amount_minor: int, reference: str, kind: str
) -> int:
    _positive(amount_minor, kind)
    if from_account_id == to_account_id:
        raise StoreError(f"{kind}: source and destination are the same account {from_account_id}")
    source = customer_account(conn, from_account_id)
    target = customer_account(conn, to_account_id)
    if source.currency != target.currency:
        raise StoreError(
            f"{kind}: account {from_account_id} is in {source.currency}, account {to_account_id} in {target.currency}"
        )
    if target.status == "closed":
        raise StoreError(f"{kind}: account {to_account_id} is closed")
    lock_accounts(conn, from_account_id, to_account_id)
    _take(conn, from_account_id, amount_minor, kind)
    _add_to_ledger(conn, to_account_id, amount_minor)
    return post_entry(
        conn, _new_state(), kind, reference, [(from_account_id, -amount_minor), (to_account_id, amount_minor)],
        source.currency,
    )


def _post_adjustment(
    conn: Connection, account_id: int, amount_minor: int, purpose: str, kind: str, reference: str
) -> int:
    """Positive: the internal `purpose` account pays the customer (interest); negative: the customer pays it (fee)."""
    if not isinstance(amount_minor, int) or amount_minor == 0:
        raise StoreError(f"{kind} amount must be a non-zero integer of minor units, got {amount_minor!r}")
    if purpose in ("", "funding", "clearing") or not purpose.isidentifier():
        raise StoreError(f"{kind}: internal purpose {purpose!r} must be a word other than funding or clearing")
    account = customer_account(conn, account_id)
    state = _new_state()
    internal = internal_account(conn, state, purpose, account.currency)
    lock_accounts(conn, account_id, internal)
    if amount_minor < 0:
        _take(conn, account_id, -amount_minor, kind)
    else:
        if account.status == "closed":
            raise StoreError(f"{kind}: account {account_id} is closed")
        _add_to_ledger(conn, account_id, amount_minor)
    _add_to_ledger(conn, internal, -amount_minor)
    return post_entry(
        conn, state, kind, reference, [(internal, -amount_minor), (account_id, amount_minor)], account.currency
    )


def _set_status(conn: Connection, account_id: int, status: str) -> None:
    if status not in ACCOUNT_STATUSES:
        raise StoreError(f"account status must be open, frozen or closed, got {status!r}")
    account = customer_account(conn, account_id)
    if account.status == "closed" and status != "closed":
        raise StoreError(f"account {account_id} is closed and cannot be reopened")
    conn.execute(update(accounts).where(accounts.c.id == account_id).values(status=status))


_VIEW_COLUMNS = tuple(
    accounts.c[name]
    for name in ("id", "cardholder_id", "kind", "purpose", "currency", "status", "ledger_minor", "held_minor")
)


def view(conn: Connection, account_id: int) -> AccountView:
    """The account's balances and active holds, read on `conn`."""
    row = conn.execute(select(*_VIEW_COLUMNS).where(accounts.c.id == account_id)).first()
    if row is None:
        raise StoreNotFound(f"account {account_id} does not exist")
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
        holds=active_holds(conn, account_id),
    )


def _list_accounts(conn: Connection, cardholder_id: int | None, internal: bool) -> list[AccountView]:
    query = select(*_VIEW_COLUMNS).order_by(accounts.c.id)
    query = query.where(accounts.c.kind == "internal") if internal else query.where(accounts.c.kind != "internal")
    if cardholder_id is not None:
        query = query.where(accounts.c.cardholder_id == cardholder_id)
    return [
        AccountView(**row._asdict(), available_minor=row.ledger_minor - row.held_minor) for row in conn.execute(query)
    ]


def _list_for_cardholder(conn: Connection, cardholder_id: int) -> list[AccountView]:
    ids = conn.execute(
        select(accounts.c.id).where(accounts.c.cardholder_id == cardholder_id).order_by(accounts.c.id)
    ).scalars().all()
    return [view(conn, account_id) for account_id in ids]
