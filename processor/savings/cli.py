"""Operator commands for savings: `savings product|open|accrue`; and the accrual as settlement's end-of-day job.

`register(sub, data_command)` adds the commands to the `processor` parser and registers the accrual with
`processor settle run`, which runs it for every day it settles.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from processor.errors import InvalidRequest

DataCommand = Callable[[Any, str, Callable[..., Awaitable[dict[str, Any]]], str], argparse.ArgumentParser]
END_OF_DAY_JOB = "savings_interest"


def _parse_rate(text: str) -> int:
    """'2.25' (percent) -> 22500 parts per million."""
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text.rstrip("%"))
    except InvalidOperation:
        raise InvalidRequest(f"rate {text!r} is not a number of percent such as 2.25") from None
    ppm = value * 10_000
    if ppm != ppm.to_integral_value() or not 0 <= ppm <= 1_000_000:
        raise InvalidRequest(f"rate {text!r}: 0 to 100 percent with at most 4 decimals")
    return int(ppm)


async def cmd_savings_product(rt: Any, args: argparse.Namespace) -> dict[str, Any]:
    from processor.savings.products import set_product

    product = await rt.store.run_write(set_product, args.code, args.name or args.code, args.currency.upper(), _parse_rate(args.rate))
    return product | {"annual_rate_percent": f"{product['annual_rate_ppm'] / 10_000:.4f}".rstrip("0").rstrip(".")}


async def cmd_savings_open(rt: Any, args: argparse.Namespace) -> dict[str, Any]:
    from processor.savings.products import open_savings

    account_id = await rt.store.run_write(open_savings, args.cardholder, args.product)
    from processor.ledger import accounts

    view = await accounts.get(rt.store, account_id)
    return {"id": view.id, "kind": view.kind, "currency": view.currency, "status": view.status,
            "ledger_minor": view.ledger_minor, "product": args.product}


async def cmd_savings_accrue(rt: Any, args: argparse.Namespace) -> dict[str, Any]:
    from processor.savings import accrue

    try:
        day = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    except ValueError:
        raise InvalidRequest(f"--date takes YYYY-MM-DD, got {args.date!r}") from None
    if day > dt.datetime.now(dt.UTC).date():
        raise InvalidRequest(f"{day} has not happened yet: interest accrues on a day's closing balance")
    try:
        report = await accrue(rt.store, day)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    return report.as_json()


def register(sub: Any, data_command: DataCommand) -> None:
    """Add `savings ...` to the `processor` parser; `settle run` then accrues interest for each day it settles."""
    from processor.savings import end_of_day
    from processor.settlement import END_OF_DAY_JOBS, register_end_of_day_job
    from processor.commands import group as _group

    if all(name != END_OF_DAY_JOB for name, _ in END_OF_DAY_JOBS):
        register_end_of_day_job(END_OF_DAY_JOB, end_of_day)
    sv = _group(sub, "savings", "savings products and interest")
    p = data_command(sv, "product", cmd_savings_product, "create a savings product or change its rate")
    p.add_argument("--code", required=True, help="the product's code, e.g. SAVE")
    p.add_argument("--name", help="the product's name (default: its code)")
    p.add_argument("--currency", default="EUR", help="ISO 4217 alpha code")
    p.add_argument("--rate", required=True, help="annual rate in percent, e.g. 2.25")
    p = data_command(sv, "open", cmd_savings_open, "open a savings account on a product")
    p.add_argument("--cardholder", type=int, required=True, help="the owner's cardholder id")
    p.add_argument("--product", required=True, help="product code")
    p = data_command(sv, "accrue", cmd_savings_accrue, "accrue interest through a day (posts at month ends); idempotent")
    p.add_argument("--date", help="YYYY-MM-DD (UTC); default yesterday")

