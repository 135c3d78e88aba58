"""Operator commands of settlement: `processor settle ...`.

`register(sub, data_command)` adds them to the `processor` parser: `settle config|network|run|status|report|
reconcile|ingest|generate`. Each command is `async def f(rt, args) -> dict`; long ones show progress on
standard error (the JSON document, with --json, stays alone on standard output).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from processor.commands import DataCommand, Runtime
from processor.errors import InvalidRequest
from processor.output import progress
from processor.settlement.calendar import parse_date



def progress_bar() -> Any:
    """A `progress(phase, done, total)` callback on standard error (see processor.output.progress)."""
    return progress("settle")


def _day(args: argparse.Namespace) -> dt.date:
    return parse_date(args.date)


async def cmd_config(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.settlement.config import save_config

    fees_json = None
    if args.fees:
        try:
            fees_json = Path(args.fees).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidRequest(f"cannot read the fee table {args.fees}: {exc.strerror}") from None
    config = await save_config(
        rt.store, cutoff=args.cutoff, timezone=args.timezone, fees_json=fees_json, tolerance_bps=args.tolerance_bps
    )
    return config.as_json()


async def cmd_network_add(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.settlement.config import add_network

    return await add_network(rt.store, rt.hsm, await rt.issuer_keys(), args.acquirer, args.name)


async def cmd_network_merchant(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.settlement.config import add_network_merchant

    return await add_network_merchant(
        rt.store, args.acquirer, terminal_id=args.terminal, merchant_id=args.merchant, mcc=args.mcc, name=args.name,
        location=args.location,
    )


async def cmd_run(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.settlement.config import load_config
    from processor.settlement.day import settle_day

    config = await load_config(rt.store)
    with progress_bar() as progress:
        return await settle_day(rt.store, _day(args), config, out_dir=args.out, progress=progress)


async def cmd_status(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.settlement import queries

    days = await rt.store.run_read(queries.list_days, args.limit)
    if not args.json:
        from processor.settlement.report import print_status

        print_status(days)
        return {}
    return {"days": days}


async def cmd_reconcile(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.settlement.report import reconcile

    result = await reconcile(rt.store, _day(args))
    if not args.json:
        from processor.settlement.report import print_reconcile

        print_reconcile(result)
        return {}
    return result


async def cmd_report(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.settlement.report import build_report, print_report, write_html

    report = await build_report(rt.store, _day(args))
    html_path = Path(args.html) if args.html else Path(args.out or "settlement") / f"report-{args.date}.html"
    report["html"] = write_html(report, html_path)
    if not args.json:
        print_report(report)
        return {}
    return report


async def cmd_ingest(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.settlement.config import load_config
    from processor.settlement.ingest import ingest_file

    config = await load_config(rt.store)
    with progress_bar() as progress:
        return await ingest_file(rt.store, rt.hsm, Path(args.file), config, progress=progress)


async def cmd_generate(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.settlement.config import load_config
    from processor.settlement.generate import generate_day

    config = await load_config(rt.store)
    with progress_bar() as progress:
        return await generate_day(
            rt.store, rt.hsm, _day(args), config, transactions=args.transactions, merchants=args.merchants,
            cards=args.cards, presentments=args.presentments,
            clearing_file=Path(args.clearing_file) if args.clearing_file else None, network=args.network,
            seed=args.seed, progress=progress,
        )


def register(sub: Any, data_command: DataCommand) -> None:
    """Add `settle ...` to the `processor` command parser."""
    se = sub.add_parser("settle", help="business day, settlement, clearing files, reports").add_subparsers(
        dest="settle_command", required=True
    )
    p = data_command(se, "config", cmd_config, "show or change cutoff, time zone, fee table and tolerance")
    p.add_argument("--cutoff", help="local time that ends a business day, HH:MM (default 22:00)")
    p.add_argument("--timezone", "--tz", dest="timezone", help="IANA time zone of the cutoff (default Europe/Paris)")
    p.add_argument("--fees", help="JSON file with the fee table (a list of rules; see README)")
    p.add_argument("--tolerance-bps", type=int, help="how far a presentment may exceed its authorization (basis points)")

    nw = se.add_parser("network", help="acquiring networks").add_subparsers(dest="network_command", required=True)
    p = data_command(nw, "add", cmd_network_add, "register an acquiring network (DE 32); prints its key material for its host")
    p.set_defaults(hsm_role="key-loader")
    p.add_argument("--acquirer", required=True, help="acquirer id the network sends in DE 32, e.g. 400001")
    p.add_argument("--name", required=True, help="the network's name")
    p = data_command(nw, "merchant", cmd_network_merchant, "register a network's merchant (DE 42) and its terminal (DE 41)")
    p.add_argument("--acquirer", required=True, help="the network's acquirer id (DE 32)")
    p.add_argument("--terminal", required=True, help="terminal id (DE 41, up to 8 characters)")
    p.add_argument("--merchant", required=True, help="merchant id (DE 42, up to 15 characters)")
    p.add_argument("--mcc", required=True, help="merchant category code")
    p.add_argument("--name", default="Merchant", help="the merchant's name")
    p.add_argument("--location", default="", help="the merchant's city and country")

    p = data_command(se, "run", cmd_run, "close a business day: claim, post, write the files")
    p.add_argument("--date", required=True, help="business day, YYYY-MM-DD")
    p.add_argument("--out", default="settlement", help="folder for the day's files (default ./settlement)")

    p = data_command(se, "status", cmd_status, "days and their state")
    p.add_argument("--limit", type=int, default=60, help="at most this many days, newest first")

    p = data_command(se, "report", cmd_report, "a day's summary on the terminal, and its HTML report")
    p.add_argument("--date", required=True, help="the business day, YYYY-MM-DD")
    p.add_argument("--out", default="settlement", help="folder of the HTML report (default ./settlement)")
    p.add_argument("--html", help="path of the HTML report (default OUT/report-DATE.html)")

    p = data_command(se, "reconcile", cmd_reconcile, "a day's exceptions")
    p.add_argument("--date", required=True, help="the business day, YYYY-MM-DD")

    p = data_command(se, "ingest", cmd_ingest, "ingest a network's clearing file (first presentments)")
    p.add_argument("file", help="the clearing file")

    p = data_command(se, "generate", cmd_generate, "write a synthetic business day straight into the store (benchmarks)")
    p.add_argument("--date", required=True, help="the business day, YYYY-MM-DD")
    p.add_argument("--transactions", type=int, default=1_000_000, help="on-us transactions (default 1,000,000)")
    p.add_argument("--merchants", type=int, default=200, help="merchants the transactions spread over")
    p.add_argument("--cards", type=int, default=1000, help="cards the transactions spread over")
    p.add_argument("--presentments", type=int, default=0, help="off-us authorizations with holds, presented in the file")
    p.add_argument("--clearing-file", help="where to write the network's clearing file of those presentments")
    p.add_argument("--network", default="400001", help="acquirer id of the network (registered when missing)")
    p.add_argument("--seed", type=int, default=1, help="random seed, for a repeatable day")
