"""Savings interest: exact daily accrual with banker's rounding, the residue carried, monthly posting."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from processor.events import read_after
from processor.issuing import cardholders
from processor.ledger import accounts, invariants
from processor.ledger.models import journal_entries
from processor.savings import accrue
from processor.savings.accrual import UNITS_PER_MINOR, accrue_day, round_half_even
from processor.savings.models import interest_accruals, savings_accounts
from processor.savings.products import open_savings, set_product


@given(st.integers(min_value=-10**12, max_value=10**12), st.integers(min_value=1, max_value=10**9))
def test_round_half_even_matches_the_exact_rule(numerator: int, denominator: int) -> None:
    exact = Fraction(numerator, denominator)
    rounded = round_half_even(numerator, denominator)
    assert abs(exact - rounded) <= Fraction(1, 2)
    if abs(exact - rounded) == Fraction(1, 2):
        assert rounded % 2 == 0
    assert rounded == round(exact)  # Python rounds Fractions half to even


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=10**11), min_size=1, max_size=400), st.integers(min_value=0, max_value=200_000))
def test_no_residue_is_ever_lost(balances: list[int], rate_ppm: int) -> None:
    carry, paid = 0, 0
    for balance in balances:
        interest, carry = accrue_day(balance, rate_ppm, carry)
        paid += interest
        assert abs(carry) * 2 <= UNITS_PER_MINOR  # the carried residue is at most half a minor unit
    exact = Fraction(sum(balances) * rate_ppm, UNITS_PER_MINOR)
    assert paid + Fraction(carry, UNITS_PER_MINOR) == exact  # what was paid plus what is carried is the exact interest


async def test_daily_accrual_posts_at_the_month_end_once(store) -> None:
    await store.run_write(set_product, "SAVE", "Saver", "EUR", 36_500)  # 3.65%: 1 cent a day per 100.00
    holder = await cardholders.create(store, "Sam Saver", "sam")
    account_id = await store.run_write(open_savings, holder, "SAVE")
    entry_id = await accounts.deposit(store, account_id, 1_000_00, reference="savings")
    opened = dt.date(2026, 1, 29)

    def backdate(conn) -> None:  # noqa: ANN001 - the deposit and the opening happened on 29 January
        conn.execute(update(journal_entries).where(journal_entries.c.id == entry_id)
                     .values(created_at=dt.datetime(2026, 1, 29, 12, tzinfo=dt.UTC)))
        conn.execute(update(savings_accounts).where(savings_accounts.c.account_id == account_id).values(opened_on=opened))

    await store.run_write(backdate)
    report = await accrue(store, dt.date(2026, 2, 2))
    assert report.days_accrued == 5 and report.accrued_minor == {"EUR": 50}  # 10 cents a day, 29 Jan to 2 Feb
    assert report.posted_minor == {"EUR": 30}  # 29, 30, 31 January, posted on the 31st
    assert (await accounts.get(store, account_id)).ledger_minor == 1_000_00 + 30
    again = await accrue(store, dt.date(2026, 2, 2))
    assert again.days_accrued == 0 and again.posted_minor == {}
    rows = await store.run_query(lambda conn: conn.execute(select(interest_accruals.c.day, interest_accruals.c.posted_entry_id)
                                                           .order_by(interest_accruals.c.day)).all())
    assert [r.day.day for r in rows] == [29, 30, 31, 1, 2] and [r.posted_entry_id is not None for r in rows] == [False, False, True, False, False]
    events = [e for e in await store.run_query(read_after, 0, 100) if e.type == "interest.posted"]
    assert [(e.cardholder_id, e.data["amount_minor"], e.data["month"]) for e in events] == [(holder, 30, "2026-01")]
    assert await invariants.check(store) == []
    with pytest.raises(ValueError, match="run earlier dates first"):
        await accrue(store, dt.date(2027, 6, 1))
