"""Operator commands of the authorization rules: stand-in and refund limits, and the advice exception list.

    processor limits set --terminal GROC0001 --floor-limit 100.00
    processor limits set --merchant GROCERY000001 --refund-per-transaction 50.00 --refund-per-day 200.00
    processor limits show --merchant GROCERY000001
    processor advice exceptions [--limit 100] [--json]
"""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection, select

from processor import issuing
from processor.auth.policy import FLOOR_LIMIT_CONFIG, REFUND_LIMITS_CONFIG, Policy
from processor.commands import DataCommand, Runtime, group
from processor.errors import InvalidRequest
from processor.iso8583.currency import exponent_for_alpha
from processor.ledger.models import auths

ADVICE_MTI = "0120"
APPROVED_RESULTS = ("approved", "partial")


def _minor(text: str | None) -> int | None:
    """'100.00' -> 10000 (two decimals, the limits' currency is the accounts'); None stays None."""
    if text is None:
        return None
    try:
        scaled = Decimal(text).scaleb(2)
    except InvalidOperation:
        raise InvalidRequest(f"amount {text!r} is not a number, e.g. 100.00") from None
    if not scaled.is_finite() or scaled < 0 or scaled != scaled.to_integral_value():
        raise InvalidRequest(f"amount {text!r} must be positive with at most 2 decimals, e.g. 100.00")
    return int(scaled)


def _money(amount_minor: int, currency: str) -> str:
    exponent = exponent_for_alpha(currency)
    units, cents = divmod(abs(amount_minor), 10**exponent)
    sign = "-" if amount_minor < 0 else ""
    return f"{sign}{units}.{cents:0{exponent}d} {currency}" if exponent else f"{sign}{units} {currency}"


def _owner(args: argparse.Namespace) -> tuple[str, str]:
    if bool(args.terminal) == bool(args.merchant):
        raise InvalidRequest("name one terminal (--terminal ID) or one merchant (--merchant ID)")
    return ("terminal", args.terminal.strip()) if args.terminal else ("merchant", args.merchant.strip())


async def _limits(rt: Runtime, kind: str, owner: str) -> dict[str, Any]:
    policy = Policy()
    floor = await issuing.config.get(rt.store, f"{FLOOR_LIMIT_CONFIG}.{kind}.{owner}")
    refunds = await issuing.config.get(rt.store, f"{REFUND_LIMITS_CONFIG}.{kind}.{owner}") if kind == "merchant" else None
    per_tx, daily = (int(v) for v in refunds.split(",")) if refunds else (None, None)
    result: dict[str, Any] = {
        kind: owner,
        "floor_limit_minor": int(floor) if floor is not None else None,
        "default_floor_limit_minor": policy.advice_floor_limit_minor,
    }
    if kind == "merchant":
        result.update(
            refund_per_transaction_minor=per_tx,
            refund_per_day_minor=daily,
            default_refund_per_transaction_minor=policy.refund_per_transaction_minor,
            default_refund_per_day_minor=policy.refund_daily_minor,
        )
    return result


async def cmd_limits_set(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """Set a terminal's or merchant's stand-in floor limit, and a merchant's unreferenced refund limits."""
    kind, owner = _owner(args)
    floor = _minor(args.floor_limit)
    per_tx, daily = _minor(args.refund_per_transaction), _minor(args.refund_per_day)
    if floor is None and per_tx is None and daily is None:
        raise InvalidRequest("nothing to set: give --floor-limit, or --refund-per-transaction and --refund-per-day")
    if (per_tx is None) != (daily is None):
        raise InvalidRequest("refund limits come in pairs: give both --refund-per-transaction and --refund-per-day")
    if per_tx is not None and kind != "merchant":
        raise InvalidRequest("refund limits are a merchant's: use --merchant ID")
    await _registered(rt, kind, owner)
    if floor is not None:
        await issuing.config.put(rt.store, f"{FLOOR_LIMIT_CONFIG}.{kind}.{owner}", str(floor))
    if per_tx is not None:
        await issuing.config.put(rt.store, f"{REFUND_LIMITS_CONFIG}.{kind}.{owner}", f"{per_tx},{daily}")
    return await _limits(rt, kind, owner)


async def _registered(rt: Runtime, kind: str, owner: str) -> None:
    found = await (issuing.terminals.get(rt.store, owner) if kind == "terminal" else _merchant_exists(rt, owner))
    if not found:
        raise InvalidRequest(f"no {kind} {owner} is registered: see processor terminal list")


async def _merchant_exists(rt: Runtime, merchant_id: str) -> bool:
    from processor.ledger.models import merchants

    def body(conn: Connection) -> bool:
        return conn.execute(select(merchants.c.id).where(merchants.c.merchant_id == merchant_id)).first() is not None

    return await rt.store.run_query(body)


async def cmd_limits_show(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """A terminal's or merchant's limits (None: the default applies)."""
    kind, owner = _owner(args)
    await _registered(rt, kind, owner)
    return await _limits(rt, kind, owner)


def _exceptions(conn: Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(
            auths.c.id, auths.c.created_at, auths.c.terminal_id, auths.c.merchant_id, auths.c.stan, auths.c.rrn,
            auths.c.card_id, auths.c.amount_minor, auths.c.currency, auths.c.rc, auths.c.reason,
        )
        .where(auths.c.mti == ADVICE_MTI, auths.c.result.not_in(APPROVED_RESULTS))
        .order_by(auths.c.id.desc())
        .limit(limit)
    )
    return [
        {
            "auth_id": r.id, "at": r.created_at.isoformat(), "terminal_id": r.terminal_id, "merchant_id": r.merchant_id,
            "stan": r.stan, "rrn": r.rrn, "card_id": r.card_id, "amount_minor": r.amount_minor, "currency": r.currency,
            "rc": r.rc, "reason": r.reason,
        }
        for r in rows
    ]


async def cmd_advice_exceptions(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """Advices acknowledged but not honoured (above the floor limit, a credit, an unusable card): no money moved."""
    rows = await rt.store.run_query(_exceptions, args.limit)
    if args.json:
        return {"exceptions": rows, "count": len(rows)}
    lines = [f"{'auth':>8}  {'when (UTC)':<19}  {'terminal':<8}  {'STAN':<6}  {'card':>6}  {'amount':>16}  rc  reason"]
    for r in rows:
        lines.append(
            f"{r['auth_id']:>8}  {r['at'][:19]:<19}  {r['terminal_id']:<8}  {r['stan']:<6}  {r['card_id'] or '-':>6}  "
            f"{_money(r['amount_minor'], r['currency']):>16}  {r['rc']}  {r['reason']}"
        )
    lines.append(f"{len(rows)} advice(s) not honoured")
    return "\n".join(lines)  # type: ignore[return-value]  # printed as is


def register(sub: Any, data_command: DataCommand) -> None:
    """Add `limits set|show` and `advice exceptions` to the `processor` command parser."""
    li = group(sub, "limits", "stand-in floor limits and refund limits of terminals and merchants")
    for name, func, help in (
        ("set", cmd_limits_set, "set a terminal's or merchant's floor limit, or a merchant's refund limits"),
        ("show", cmd_limits_show, "a terminal's or merchant's limits"),
    ):
        p = data_command(li, name, func, help)
        p.add_argument("--terminal", help="terminal id (DE 41)")
        p.add_argument("--merchant", help="merchant id (DE 42)")
        if name == "set":
            p.add_argument("--floor-limit", help="advices (0120) are honoured up to this amount, e.g. 100.00")
            p.add_argument("--refund-per-transaction", help="largest refund without its purchase, e.g. 50.00")
            p.add_argument("--refund-per-day", help="the merchant's refunds without their purchase per UTC day")
    ad = group(sub, "advice", "stand-in advices (0120)")
    p = data_command(ad, "exceptions", cmd_advice_exceptions, "advices acknowledged but not honoured: no money moved")
    p.add_argument("--limit", type=int, default=100, help="newest first, at most this many (default 100)")


__all__ = ["register"]
