"""`terminal-sim`: simulated terminals that talk ISO 8583 to a running engine."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from terminal_sim.load import load_json_list, parse_mix, print_summary, run_load
from terminal_sim.pos import CardData, PosTerminal


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


async def _provisioned(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Issue our own cards and terminals in the processor's store (same machine, same database and HSM)."""
    from hsm_sim import connect
    from processor.config import Settings
    from processor.issuing import load_issuer_keys
    from processor.issuing.batch import provision
    from processor.ledger import Store

    settings = Settings.from_env()
    store = await Store.open(args.db or settings.db_url)
    try:
        hsm = await connect(args.hsm or settings.hsm_url)
        try:
            keys = await load_issuer_keys(store, hsm)
            population = await provision(
                store,
                hsm,
                keys,
                cardholders=args.provision,
                terminals=max(1, min(args.connections, 64)),
                deposit_minor=10_000_000_00,
            )
        finally:
            await hsm.close()
    finally:
        await store.close()
    return population.cards, population.terminals


async def _load(args: argparse.Namespace) -> int:
    host, port = args.tcp
    if args.cards and args.terminals:
        cards_json, terminals_json = load_json_list(args.cards), load_json_list(args.terminals)
    elif args.provision:
        cards_json, terminals_json = await _provisioned(args)
    else:
        print("terminal-sim: give --cards and --terminals files, or --provision N", file=sys.stderr)
        return 2
    cards = [CardData.from_issued(c, c.get("pin")) for c in cards_json]
    terminals = [PosTerminal.from_registered(t) for t in terminals_json]
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    result = await run_load(
        host,
        port,
        terminals,
        cards,
        connections=args.connections,
        seconds=args.seconds,
        rate=args.rate,
        mix=parse_mix(args.mix),
        timeout_s=args.timeout,
        progress=progress,
        seed=args.seed,
    )
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terminal-sim", description="Simulated POS and NFC terminals.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load", help="drive many terminal connections against a running engine")
    p.add_argument("--tcp", type=_host_port, default=("127.0.0.1", 8583), help="engine HOST:PORT")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, help="fixed overall request rate per second (default: as fast as answered)")
    p.add_argument("--mix", help="weights, e.g. purchase=60,pin=15,manual=10,preauth=5,balance=5,refund=5")
    p.add_argument("--cards", help="JSON list of cards as `processor card issue --json` prints them (with a pin key)")
    p.add_argument("--terminals", help="JSON list of terminals as `processor terminal add --json` prints them")
    p.add_argument("--provision", type=int, help="issue this many funded cards (and terminals) in the processor's store first")
    p.add_argument("--db", help="processor database URL for --provision (default: PROCESSOR_DB_URL)")
    p.add_argument("--hsm", help="processor HSM URL for --provision (default: PROCESSOR_HSM_URL)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds before an unanswered request is reversed")
    p.add_argument("--seed", type=int, help="random seed for a repeatable mix")
    p.add_argument("--json", action="store_true", help="print one JSON document at the end")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_load)
    return parser


def quiet_library_deprecations() -> None:
    """psec and pyemv still call TDES the old way; their warnings say nothing an operator can act on."""
    import warnings

    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:
        return
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)


def main(argv: list[str] | None = None) -> int:
    quiet_library_deprecations()
    args = build_parser().parse_args(argv)
    if args.connections < 1 or args.seconds <= 0:
        print("terminal-sim: --connections and --seconds must be positive", file=sys.stderr)
        return 2
    try:
        import uvloop

        return uvloop.run(args.func(args))
    except ImportError:
        return asyncio.run(args.func(args))
    except (ValueError, OSError) as exc:
        print(f"terminal-sim: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
