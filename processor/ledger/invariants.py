"""Ledger invariants, checked by queries at any time (`Store.check_invariants`, `Store.ledger_report`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, exists, func, select

from processor.ledger.models import accounts, auths, holds, journal_entries, postings

a, p, h, au, je = accounts.c, postings.c, holds.c, auths.c, journal_entries.c


def _negative_customer_accounts(conn: Connection) -> tuple[list[str], list[str]]:
    """Customer accounts below zero available: warnings when a forced posting or hold explains it."""
    forced_hold = exists().where(h.account_id == a.id, h.forced.is_(True))
    forced_entry = exists().where(p.account_id == a.id, p.entry_id == je.id, je.forced.is_(True))
    rows = conn.execute(
        select(a.id, a.ledger_minor, a.held_minor, a.currency, (forced_hold | forced_entry).label("forced")).where(
            a.kind != "internal", a.ledger_minor - a.held_minor < 0
        )
    )
    failures, warnings = [], []
    for r in rows:
        text = f"account {r.id}: available {r.ledger_minor - r.held_minor} {r.currency} is below zero"
        (warnings if r.forced else failures).append(text + (" after a forced advice/completion" if r.forced else ""))
    return failures, warnings


def check(conn: Connection) -> tuple[list[str], list[str]]:
    """(failures, warnings); no failures means the ledger is consistent."""
    failures: list[str] = []
    for r in conn.execute(
        select(p.entry_id, p.currency, func.sum(p.amount_minor).label("total"))
        .group_by(p.entry_id, p.currency)
        .having(func.sum(p.amount_minor) != 0)
    ):
        failures.append(f"journal entry {r.entry_id} does not balance in {r.currency}: postings sum to {r.total}")
    for r in conn.execute(
        select(p.id, p.account_id, p.currency, a.currency.label("acc_currency"))
        .join(accounts, a.id == p.account_id)
        .where(p.currency != a.currency)
    ):
        failures.append(f"posting {r.id} is in {r.currency} on account {r.account_id} kept in {r.acc_currency}")
    posted = (
        select(func.coalesce(func.sum(p.amount_minor), 0)).where(p.account_id == a.id).scalar_subquery()
    )
    for r in conn.execute(select(a.id, a.ledger_minor, posted.label("posted")).where(a.ledger_minor != posted)):
        failures.append(f"account {r.id}: ledger_minor {r.ledger_minor} but its postings sum to {r.posted}")
    active = (
        select(func.coalesce(func.sum(h.amount_minor), 0))
        .where(h.account_id == a.id, h.status == "active")
        .scalar_subquery()
    )
    for r in conn.execute(select(a.id, a.held_minor, active.label("active")).where(a.held_minor != active)):
        failures.append(f"account {r.id}: held_minor {r.held_minor} but its active holds sum to {r.active}")
    for r in conn.execute(
        select(a.currency, func.sum(a.ledger_minor).label("total")).group_by(a.currency).having(func.sum(a.ledger_minor) != 0)
    ):
        failures.append(f"ledger balances in {r.currency} sum to {r.total}, not zero")
    for r in conn.execute(
        select(h.id, h.status, h.amount_minor, h.captured_minor, h.closed_at).where(
            (h.captured_minor > h.amount_minor)
            | (h.captured_minor < 0)
            | ((h.status == "captured") & h.captured_minor.is_(None))
            | ((h.status != "active") & h.closed_at.is_(None))
            | ((h.status == "active") & h.closed_at.is_not(None))
        )
    ):
        failures.append(
            f"hold {r.id} ({r.status}): amount {r.amount_minor}, captured {r.captured_minor}, closed_at {r.closed_at}"
        )
    for r in conn.execute(
        select(au.hold_id, func.count().label("n"))
        .where(au.op == "capture", au.result == "approved", au.hold_id.is_not(None))
        .group_by(au.hold_id)
        .having(func.count() > 1)
    ):
        failures.append(f"hold {r.hold_id} was captured {r.n} times")
    for r in conn.execute(
        select(au.original_auth_id, func.count().label("n"))
        .where(au.op == "reverse", au.approved_minor > 0)
        .group_by(au.original_auth_id)
        .having(func.count() > 1)
    ):
        failures.append(f"auth {r.original_auth_id} was reversed {r.n} times")
    negative_failures, warnings = _negative_customer_accounts(conn)
    return failures + negative_failures, warnings


def report(conn: Connection) -> dict[str, Any]:
    """Totals per currency, counts, and the warnings (forced overdrafts) of the ledger."""
    currencies: dict[str, dict[str, int]] = {}
    for r in conn.execute(
        select(
            a.currency,
            a.kind,
            a.purpose,
            func.count().label("n"),
            func.sum(a.ledger_minor).label("ledger"),
            func.sum(a.held_minor).label("held"),
        ).group_by(a.currency, a.kind, a.purpose)
    ):
        c = currencies.setdefault(
            r.currency,
            {"customer_accounts": 0, "customer_ledger_minor": 0, "customer_held_minor": 0, "funding_minor": 0,
             "clearing_minor": 0},
        )
        if r.kind == "internal":
            c[f"{r.purpose}_minor"] = c.get(f"{r.purpose}_minor", 0) + int(r.ledger)
        else:
            c["customer_accounts"] += r.n
            c["customer_ledger_minor"] += int(r.ledger)
            c["customer_held_minor"] += int(r.held)
    hold_counts = {r.status: r.n for r in conn.execute(select(h.status, func.count().label("n")).group_by(h.status))}
    auth_counts = {
        r.rc: r.n for r in conn.execute(select(au.rc, func.count().label("n")).group_by(au.rc).order_by(au.rc))
    }
    failures, warnings = check(conn)
    return {
        "currencies": currencies,
        "journal_entries": conn.execute(select(func.count()).select_from(journal_entries)).scalar_one(),
        "postings": conn.execute(select(func.count()).select_from(postings)).scalar_one(),
        "holds": hold_counts,
        "auths_by_rc": auth_counts,
        "failures": failures,
        "warnings": warnings,
    }


__all__ = ["check", "report"]
