"""Operator commands of the money app: `api` (serve), `app password|operator-key`, `card controls`, `api-load`.

`register(sub, data_command)` adds them to the `processor` parser. Commands that return data are
`async def f(rt, args) -> dict`; `api` and `api-load` run until done (`args.run(args, settings) -> int`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from processor.commands import comma_list
from processor.errors import InvalidRequest

DataCommand = Callable[[Any, str, Callable[..., Awaitable[dict[str, Any]]], str], argparse.ArgumentParser]


def _read_password(args: argparse.Namespace) -> str:
    """From standard input (one line), or a prompt on a terminal: never from the command line."""
    if sys.stdin.isatty():
        first = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != first:
            raise InvalidRequest("the two passwords differ; nothing was changed")
        return first
    return sys.stdin.readline().rstrip("\n")


async def cmd_app_password(rt: Any, args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    from processor.api import security
    from processor.api.errors import ApiError

    from processor.issuing import cardholders

    holder = await cardholders.find_by_handle(rt.store, args.handle.lstrip("@"))
    if holder is None:
        raise InvalidRequest(f"no cardholder with handle {args.handle!r}; create it with `processor cardholder create`")
    try:
        hashed = await asyncio.to_thread(security.hash_password, _read_password(args))
        await rt.store.run_write(security.set_password, holder.id, hashed)
    except ApiError as err:
        raise InvalidRequest(err.message) from None
    return {"id": holder.id, "handle": holder.handle, "password_set": True}


async def cmd_app_operator_key(rt: Any, args: argparse.Namespace) -> dict[str, Any]:
    from processor.api import security
    from processor.api.errors import ApiError

    try:
        operator_id, key = await rt.store.run_write(security.create_operator, args.name)
    except ApiError as err:
        raise InvalidRequest(err.message) from None
    return {"id": operator_id, "name": args.name, "key": key}


_ON_OFF = {"on": True, "off": False}


def _limit(text: str | None, exponent: int) -> int | None:
    """'250.00' -> 25000; 'none' -> no limit."""
    from processor.iso8583.currency import parse_amount

    if text is None or text.lower() == "none":
        return None
    try:
        return parse_amount(text, exponent, what="limit")
    except ValueError as exc:
        raise InvalidRequest(f"{exc} (or none)") from None


async def cmd_card_controls(rt: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Show a card's spending controls, or change the ones given (the rest stay as they are)."""
    import dataclasses

    from processor.iso8583.currency import exponent_for_alpha
    from processor.issuing import controls as ctl
    from processor.ledger.errors import StoreError

    from processor import issuing

    card = await issuing.cards.get(rt.store, args.card_id)
    current = await rt.store.run_query(ctl.get_controls, args.card_id) or ctl.CardControls()
    exponent = exponent_for_alpha(card.currency)
    changes: dict[str, Any] = {}
    if args.clear:
        current = ctl.CardControls()
    for flag, field_name in (("per_transaction", "per_transaction_minor"), ("daily", "daily_minor"), ("monthly", "monthly_minor")):
        if getattr(args, flag) is not None:
            changes[field_name] = _limit(getattr(args, flag), exponent)
    for flag in ("daily_count", "monthly_count"):
        if getattr(args, flag) is not None:
            changes[flag] = None if args.__dict__[flag].lower() == "none" else _count(args.__dict__[flag])
    if args.block_mcc is not None:
        changes["blocked_mccs"] = comma_list(args.block_mcc, "--block-mcc")
    if args.block_category is not None:
        changes["blocked_categories"] = comma_list(args.block_category, "--block-category")
    if args.countries is not None:
        countries = comma_list(args.countries, "--countries") or ()
        changes["allowed_countries"] = None if args.countries.lower() == "any" else tuple(c.upper() for c in countries)
    for channel in ("contactless", "ecommerce", "atm", "abroad"):
        if getattr(args, channel) is not None:
            changes[channel] = _ON_OFF[getattr(args, channel)]
    wanted = dataclasses.replace(current, **changes)
    if changes or args.clear:
        try:
            await rt.store.run_write(ctl.set_controls, args.card_id, wanted)
        except StoreError as err:
            raise InvalidRequest(str(err)) from None
    return {"card_id": args.card_id, "currency": card.currency, **wanted.as_json()}


def _count(text: str) -> int:
    if not text.isdigit():
        raise InvalidRequest(f"count {text!r} is not a whole number (or none)")
    return int(text)


def cmd_api(args: argparse.Namespace, settings: Any) -> int:
    from processor.api.server import parse_http, run_api, run_until_done

    host, port = parse_http(args.http)
    return run_until_done(_serve(run_api(settings, host=host, port=port), settings))


async def _serve(coro: Awaitable[None], settings: Any) -> int:
    import asyncio

    from processor.logs import configure
    from processor.server import flush_logs_periodically

    handler = configure(settings.log_file)
    flusher = asyncio.create_task(flush_logs_periodically(handler))
    try:
        await coro
    finally:
        flusher.cancel()
        handler.flush()
    return 0


def cmd_api_load(args: argparse.Namespace, settings: Any) -> int:
    from processor.api.load import main_from_args

    return main_from_args(args, settings)


def register(sub: Any, data_command: DataCommand) -> None:
    """Add `api`, `app ...`, `card controls` and `api-load` to the `processor` command parser."""
    from processor.commands import group as _group

    p = sub.add_parser("api", help="serve the money app's HTTP API")
    p.add_argument("--http", default="127.0.0.1:8080", help="HOST:PORT to listen on (default 127.0.0.1:8080)")
    p.set_defaults(func=None, run=cmd_api)

    app = _group(sub, "app", "money app credentials")
    p = data_command(app, "password", cmd_app_password, "set a cardholder's app password (read from standard input)")
    p.add_argument("handle", help="the cardholder's handle, e.g. ada")
    p = data_command(app, "operator-key", cmd_app_operator_key, "create (or replace) an operator's API key; shown once")
    p.add_argument("--name", required=True, help="who the key belongs to")

    cd = _group(sub, "card", "cards")
    p = data_command(cd, "controls", cmd_card_controls, "show or change a card's spending controls (amounts in major units)")
    p.add_argument("card_id", type=int, help="the card")
    p.add_argument("--per-transaction", help="largest single payment, e.g. 250.00 (none: no limit)")
    p.add_argument("--daily", help="amount per UTC day (none: no limit)")
    p.add_argument("--daily-count", help="payments per UTC day (none: no limit)")
    p.add_argument("--monthly", help="amount per month (none: no limit)")
    p.add_argument("--monthly-count", help="payments per month (none: no limit)")
    p.add_argument("--block-mcc", help="merchant category codes to refuse, comma separated ('' for none)")
    p.add_argument("--block-category", help="categories to refuse: " + "gambling, cash, quasi_cash, airlines, car_rental, "
                   "lodging, restaurants, fuel, groceries, digital_goods, adult ('' for none)")
    p.add_argument("--countries", help="only these merchant countries (ISO alpha-2, comma separated), or any")
    for channel, what in (("contactless", "contactless payments"), ("ecommerce", "keyed and online payments"),
                          ("atm", "cash withdrawals"), ("abroad", "payments outside the issuer's country")):
        p.add_argument(f"--{channel}", choices=["on", "off"], help=what)
    p.add_argument("--clear", action="store_true", help="start from no controls at all")

    p = sub.add_parser("api-load", help="drive the money app's API with P2P payments and measure it")
    from processor.api.load import add_arguments

    add_arguments(p)
    p.set_defaults(func=None, run=cmd_api_load)
