"""Savings: products with an annual rate, daily interest accrual and monthly posting.

    report = await accrue(store, dt.date(2026, 11, 30))   # the end-of-day job; idempotent per day
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from processor.savings.accrual import AccrualReport, accrue_day, accrue_through, round_half_even


async def accrue(store: Any, through: dt.date) -> AccrualReport:
    """Accrue every savings account up to and including `through` (UTC day), in one transaction."""
    return await store.run_write(accrue_through, through)


async def end_of_day(store: Any, day: dt.date, window: tuple[dt.datetime, dt.datetime]) -> dict[str, Any]:
    """Settlement's end-of-day job: accrue through the settled business day (idempotent for that day)."""
    return (await accrue(store, day)).as_json()


__all__ = ["AccrualReport", "accrue", "end_of_day", "accrue_day", "accrue_through", "round_half_even"]
