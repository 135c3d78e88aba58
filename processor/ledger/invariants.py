"""Ledger invariants, checked by queries at any time on one consistent snapshot (`check`, `report`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, exists, func, select

from processor.ledger.interface import StoreInterface
from processor.ledger.models import accounts, auths, holds, journal_entries, postings



def _negative_customer_accounts(conn: Connection) -> tuple[list[str], list[str]]:
    """Customer accounts below zero available: warnings when a forced posting or hold explains it."""
    forced_hold = exists().where(holds.c.account_id == accounts.c.id, holds.c.forced.is_(True))
    forced_entry = exists().where(
        postings.c.account_id == accounts.c.id,
        postings.c.entry_id == journal_entries.c.id,
        journal_entries.c.forced.is_(True),
    )
    rows = conn.execute(
        select(
            accounts.c.id,
            accounts.c.ledger_minor,
            accounts.c.held_minor,
            accounts.c.currency,
            (forced_hold | forced_entry).label("forced"),
        ).where(accounts.c.kind != "internal", accounts.c.ledger_minor - accounts.c.held_minor < 0)
    )
    failures, warnings = [], []
    for row in rows:
        text = f"account {row.id}: available {row.ledger_minor - row.held_minor} {row.currency} is below zero"
        if row.forced:
            warnings.append(text + " after an honoured advice or a completion within its tolerance")
        else:
            failures.append(text)
    return failures, warnings


_APPROVED = ("approved", "partial")


def _credits_without_source(conn: Connection) -> list[str]:
    """Card credits (refunds, reversals) must each come from an approved request that names what it undoes.

    A refund entry belongs to an approved refund (`credit`), or to the completion (`capture`) of an
    approved refund authorization; a reversal entry to an approved reversal whose original was approved.
    """
    original = auths.alias("original")
    rows = conn.execute(
        select(
            journal_entries.c.id, journal_entries.c.kind, auths.c.op, auths.c.result, original.c.op.label("orig_op"),
            original.c.result.label("orig_result"),
        )
        .select_from(
            journal_entries.outerjoin(auths, auths.c.id == journal_entries.c.auth_id).outerjoin(
                original, original.c.id == auths.c.original_auth_id
            )
        )
        .where(journal_entries.c.kind.in_(("refund", "reversal")))
    )
    failures = []
    for row in rows:
        if row.result not in _APPROVED:
            ok = False
        elif row.kind == "refund":
            ok = row.op == "credit" or (row.op == "capture" and row.orig_op == "credit" and row.orig_result in _APPROVED)
        else:
            ok = row.op == "reverse" and row.orig_result in _APPROVED
        if not ok:
            failures.append(f"journal entry {row.id} ({row.kind}) credits without its source: no approved request behind it")
    return failures


def _violations(conn: Connection) -> tuple[list[str], list[str]]:
    """(failures, warnings); no failures means the ledger is consistent."""
    failures: list[str] = []
    for row in conn.execute(
        select(postings.c.entry_id, postings.c.currency, func.sum(postings.c.amount_minor).label("total"))
        .group_by(postings.c.entry_id, postings.c.currency)
        .having(func.sum(postings.c.amount_minor) != 0)
    ):
        failures.append(f"journal entry {row.entry_id} does not balance in {row.currency}: postings sum to {row.total}")
    for row in conn.execute(
        select(postings.c.id, postings.c.account_id, postings.c.currency, accounts.c.currency.label("acc_currency"))
        .join(accounts, accounts.c.id == postings.c.account_id)
        .where(postings.c.currency != accounts.c.currency)
    ):
        failures.append(f"posting {row.id} is in {row.currency} on account {row.account_id} kept in {row.acc_currency}")
    posted = (
        select(func.coalesce(func.sum(postings.c.amount_minor), 0))
        .where(postings.c.account_id == accounts.c.id)
        .scalar_subquery()
    )
    for row in conn.execute(
        select(accounts.c.id, accounts.c.ledger_minor, posted.label("posted")).where(accounts.c.ledger_minor != posted)
    ):
        failures.append(f"account {row.id}: ledger_minor {row.ledger_minor} but its postings sum to {row.posted}")
    active = (
        select(func.coalesce(func.sum(holds.c.amount_minor), 0))
        .where(holds.c.account_id == accounts.c.id, holds.c.status == "active")
        .scalar_subquery()
    )
    for row in conn.execute(
        select(accounts.c.id, accounts.c.held_minor, active.label("active")).where(accounts.c.held_minor != active)
    ):
        failures.append(f"account {row.id}: held_minor {row.held_minor} but its active holds sum to {row.active}")
    for row in conn.execute(
        select(accounts.c.currency, func.sum(accounts.c.ledger_minor).label("total"))
        .group_by(accounts.c.currency)
        .having(func.sum(accounts.c.ledger_minor) != 0)
    ):
        failures.append(f"ledger balances in {row.currency} sum to {row.total}, not zero")
    for row in conn.execute(
        select(holds.c.id, holds.c.status, holds.c.amount_minor, holds.c.captured_minor, holds.c.closed_at).where(
            (holds.c.captured_minor > holds.c.amount_minor)
            | (holds.c.captured_minor < 0)
            | ((holds.c.status == "captured") & holds.c.captured_minor.is_(None))
            | ((holds.c.status != "active") & holds.c.closed_at.is_(None))
            | ((holds.c.status == "active") & holds.c.closed_at.is_not(None))
        )
    ):
        failures.append(
            f"hold {row.id} ({row.status}): amount {row.amount_minor}, captured {row.captured_minor}, "
            f"closed_at {row.closed_at}"
        )
    for row in conn.execute(
        select(auths.c.hold_id, func.count().label("n"))
        .where(auths.c.op == "capture", auths.c.result == "approved", auths.c.hold_id.is_not(None))
        .group_by(auths.c.hold_id)
        .having(func.count() > 1)
    ):
        failures.append(f"hold {row.hold_id} was captured {row.n} times")
    for row in conn.execute(
        select(auths.c.original_auth_id, func.count().label("n"))
        .where(auths.c.op == "reverse", auths.c.approved_minor > 0)
        .group_by(auths.c.original_auth_id)
        .having(func.count() > 1)
    ):
        failures.append(f"auth {row.original_auth_id} was reversed {row.n} times")
    failures += _credits_without_source(conn)
    negative_failures, warnings = _negative_customer_accounts(conn)
    return failures + negative_failures, warnings


def _report(conn: Connection) -> dict[str, Any]:
    """Totals per currency, counts, and the warnings (forced overdrafts) of the ledger."""
    currencies: dict[str, dict[str, int]] = {}
    for row in conn.execute(
        select(
            accounts.c.currency,
            accounts.c.kind,
            accounts.c.purpose,
            func.count().label("n"),
            func.sum(accounts.c.ledger_minor).label("ledger"),
            func.sum(accounts.c.held_minor).label("held"),
        ).group_by(accounts.c.currency, accounts.c.kind, accounts.c.purpose)
    ):
        totals = currencies.setdefault(
            row.currency,
            {"customer_accounts": 0, "customer_ledger_minor": 0, "customer_held_minor": 0, "funding_minor": 0,
             "clearing_minor": 0},
        )
        if row.kind == "internal":
            totals[f"{row.purpose}_minor"] = totals.get(f"{row.purpose}_minor", 0) + int(row.ledger)
        else:
            totals["customer_accounts"] += row.n
            totals["customer_ledger_minor"] += int(row.ledger)
            totals["customer_held_minor"] += int(row.held)
    hold_rows = conn.execute(select(holds.c.status, func.count().label("n")).group_by(holds.c.status))
    hold_counts = {row.status: row.n for row in hold_rows}
    auth_rows = conn.execute(select(auths.c.rc, func.count().label("n")).group_by(auths.c.rc).order_by(auths.c.rc))
    auth_counts = {row.rc: row.n for row in auth_rows}
    failures, warnings = _violations(conn)
    return {
        "currencies": currencies,
        "journal_entries": conn.execute(select(func.count()).select_from(journal_entries)).scalar_one(),
        "postings": conn.execute(select(func.count()).select_from(postings)).scalar_one(),
        "holds": hold_counts,
        "auths_by_rc": auth_counts,
        "failures": failures,
        "warnings": warnings,
    }


async def check(store: StoreInterface) -> list[str]:
    """Violations of the ledger invariants (empty when healthy), from one consistent snapshot."""
    failures, _ = await store.run_read(_violations)
    return failures


async def report(store: StoreInterface) -> dict[str, Any]:
    """Totals per currency, counts, failures and warnings (forced overdrafts)."""
    return await store.run_read(_report)
