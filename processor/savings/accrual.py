"""Savings interest: daily accrual on the end-of-day balance, actual/365, posted monthly.

Each day's interest is balance x rate / 365, kept exact: the rate is in parts per million, so one day's
interest is a whole number of units of 1/(365 x 1,000,000) of a minor unit. It is rounded to the minor unit
half to even (banker's rounding) and the residue, exact, is carried into the next day's interest: over any
period the sum of the rounded days differs from the exact interest by less than one minor unit, and no
residue is ever dropped. The rounded days add up on the account (`accrued_minor`); on the last day of a
month that sum is posted from the currency's interest-expense account, with an `interest.posted` event.

`accrue_through(conn, day)` is the end-of-day job (`processor savings accrue --date`, and the settlement
day). It is idempotent per day: each account is accrued for the days after its last accrued day up to
`day`, each (account, day) once, in one transaction with its posting.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from processor.events.outbox import cardholder_event, write_events
from processor.ledger.apply import BatchState, internal_account, post_entry
from processor.ledger.models import accounts, postings, utcnow
from processor.savings.models import interest_accruals, savings_accounts, savings_products

DAYS_IN_YEAR = 365
PPM = 1_000_000
UNITS_PER_MINOR = DAYS_IN_YEAR * PPM
INTEREST_EXPENSE = "interest_expense"
MAX_DAYS_PER_RUN = 400

a, p, sa, sp, ia = accounts.c, postings.c, savings_accounts.c, savings_products.c, interest_accruals.c


def round_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, ties to even (denominator > 0)."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def accrue_day(balance_minor: int, annual_rate_ppm: int, carry_units: int) -> tuple[int, int]:
    """(interest_minor, new_carry_units) for one day: exact interest plus carry, rounded half to even.

    >>> accrue_day(100_000_00, 20_000, 0)   # 100,000.00 at 2% for a day: 547.9452... cents
    (548, -20000000)
    """
    units = max(balance_minor, 0) * annual_rate_ppm + carry_units
    interest_minor = round_half_even(units, UNITS_PER_MINOR)
    return interest_minor, units - interest_minor * UNITS_PER_MINOR


def _days(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    day = start
    while day <= end:
        yield day
        day += dt.timedelta(days=1)


def end_of_day_balance(conn: Connection, account_id: int, day: dt.date) -> int:
    """The ledger balance at the end of `day` (UTC): today's balance less what was posted after that day."""
    cutoff = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
    from processor.ledger.models import journal_entries

    je = journal_entries.c
    later = conn.execute(
        select(func.coalesce(func.sum(p.amount_minor), 0))
        .join(journal_entries, je.id == p.entry_id)
        .where(p.account_id == account_id, je.created_at >= cutoff)
    ).scalar_one()
    ledger = conn.execute(select(a.ledger_minor).where(a.id == account_id)).scalar_one()
    return int(ledger) - int(later)


@dataclass
class AccrualReport:
    """What one run did: days accrued, interest accrued and posted, per currency."""

    through: dt.date
    accounts: int = 0
    days_accrued: int = 0
    accrued_minor: dict[str, int] = field(default_factory=dict)
    posted_minor: dict[str, int] = field(default_factory=dict)
    postings: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"date": self.through.isoformat(), "accounts": self.accounts, "days_accrued": self.days_accrued,
                "accrued_minor": self.accrued_minor, "posted_minor": self.posted_minor, "postings": self.postings}


def accrue_through(conn: Connection, through: dt.date) -> AccrualReport:
    """Accrue (and on month ends post) every savings account up to and including `through`."""
    report = AccrualReport(through)
    rows = conn.execute(
        select(sa.account_id, sa.accrued_minor, sa.carry_units, sa.opened_on, sa.last_accrued_on, sp.annual_rate_ppm,
               a.currency, a.cardholder_id, a.status)
        .join(savings_products, sp.id == sa.product_id)
        .join(accounts, a.id == sa.account_id)
        .order_by(sa.account_id)
    ).all()
    state = BatchState(now=utcnow(), internal_ids={})
    events = []
    for row in rows:
        start = (row.last_accrued_on + dt.timedelta(days=1)) if row.last_accrued_on else row.opened_on
        if start > through or row.status == "closed":
            continue
        if (through - start).days >= MAX_DAYS_PER_RUN:
            raise ValueError(f"savings account {row.account_id} last accrued {row.last_accrued_on}: "
                             f"more than {MAX_DAYS_PER_RUN} days to catch up; run earlier dates first")
        report.accounts += 1
        accrued, carry = row.accrued_minor, row.carry_units
        for day in _days(start, through):
            balance = end_of_day_balance(conn, row.account_id, day)
            interest, carry = accrue_day(balance, row.annual_rate_ppm, carry)
            accrued += interest
            entry_id = None
            month_end = (day + dt.timedelta(days=1)).day == 1
            if month_end and accrued > 0:
                entry_id = _post(conn, state, row, accrued, day)
                events.append(cardholder_event(row.cardholder_id, "interest.posted", {
                    "account_id": row.account_id, "amount_minor": accrued, "currency": row.currency,
                    "month": day.strftime("%Y-%m"), "entry_id": entry_id}, state.now))
                report.posted_minor[row.currency] = report.posted_minor.get(row.currency, 0) + accrued
                report.postings += 1
            conn.execute(insert(interest_accruals), {
                "account_id": row.account_id, "day": day, "balance_minor": balance, "annual_rate_ppm": row.annual_rate_ppm,
                "accrued_minor": interest, "carry_units": carry, "posted_entry_id": entry_id})
            report.accrued_minor[row.currency] = report.accrued_minor.get(row.currency, 0) + interest
            report.days_accrued += 1
            if month_end:
                accrued = 0
        conn.execute(update(savings_accounts).where(sa.account_id == row.account_id)
                     .values(accrued_minor=accrued, carry_units=carry, last_accrued_on=through))
    write_events(conn, events)
    return report


def _post(conn: Connection, state: BatchState, row: Any, amount_minor: int, day: dt.date) -> int:
    """Interest-expense account -> the savings account, as one balanced entry."""
    expense = internal_account(conn, state, INTEREST_EXPENSE, row.currency)
    if conn.dialect.name == "postgresql":
        conn.execute(select(a.id).where(a.id.in_(sorted({expense, row.account_id}))).order_by(a.id).with_for_update())
    conn.execute(update(accounts).where(a.id == row.account_id).values(ledger_minor=a.ledger_minor + amount_minor))
    conn.execute(update(accounts).where(a.id == expense).values(ledger_minor=a.ledger_minor - amount_minor))
    return post_entry(conn, state, "interest", f"interest {day:%Y-%m} account {row.account_id}",
                      [(expense, -amount_minor), (row.account_id, amount_minor)], row.currency)
