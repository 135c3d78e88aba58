"""The operator CLI: `processor <command>`; every command that returns data accepts --json."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from processor import issuing, ledger
from processor.commands import Runtime
from processor.config import Settings
from processor.errors import ConfigurationError, InvalidRequest, NotFound, ProcessorError
from processor.logs import quiet_library_deprecations

if TYPE_CHECKING:
    from hsm_sim import HsmApi


log = logging.getLogger("processor.cli")

CARD_ACTIONS = {
    "activate": "active",
    "freeze": "frozen",
    "unfreeze": "active",
    "report-lost": "lost",
    "report-stolen": "stolen",
    "close": "closed",
}


@contextlib.asynccontextmanager
async def runtime(settings: Settings, hsm_role: str = "engine", *, hsm_name: str | None = None) -> AsyncIterator[Runtime]:
    """Open the store and the HSM named by the settings (a networked HSM as `hsm_role`), and close both afterwards."""
    from processor.config import open_hsm
    from processor.ledger import Store

    store = await Store.open(settings.db_url)
    try:
        hsm = await open_hsm(settings, hsm_role, name=hsm_name)
        try:
            yield Runtime(settings, store, hsm)
        finally:
            await hsm.close()
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def key_loader(rt: Runtime) -> AsyncIterator[HsmApi]:
    """The HSM as the key-loading role, which alone receives terminals' initial keys from a networked HSM
    (`key-loader.pem` in PROCESSOR_HSM_TLS_DIR); an HSM in this process is the one already open."""
    from processor.config import open_hsm

    if not rt.settings.hsm_url.startswith("tcps://"):
        yield rt.hsm
        return
    loader = await open_hsm(rt.settings, "key-loader")
    try:
        yield loader
    finally:
        await loader.close()


def parse_amount_minor(text: str, exponent: int = 2) -> int:
    """'100.00' -> 10000 for a currency with two decimals; refuses more decimals than the currency has."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidRequest(f"amount {text!r} is not a number") from None
    scaled = value.scaleb(exponent)
    if value < 0 or scaled != scaled.to_integral_value():
        raise InvalidRequest(f"amount {text!r} must be positive with at most {exponent} decimals")
    return int(scaled)


def format_minor(amount_minor: int, currency: str) -> str:
    """10000, 'EUR' -> '100.00 EUR'."""
    from processor.iso8583.currency import exponent_for_alpha

    exponent = exponent_for_alpha(currency)
    sign = "-" if amount_minor < 0 else ""
    units, cents = divmod(abs(amount_minor), 10**exponent)
    return f"{sign}{units}.{cents:0{exponent}d} {currency}" if exponent else f"{sign}{units} {currency}"


# ------------------------------------------------------------------ commands


async def cmd_init(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.issuing import ensure_issuer_keys

    if args.bin:
        await issuing.config.put(rt.store, issuing.config.ISSUER_BIN, args.bin)
    keys = await ensure_issuer_keys(rt.store, rt.hsm)
    return {
        "db_url": _safe_url(rt.settings.db_url),
        "hsm_url": rt.settings.hsm_url,
        "bin": await issuing.config.issuer_bin(rt.store),
        "keys": keys.as_dict(),
    }


async def cmd_cardholder_create(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    cardholder_id = await issuing.cardholders.create(rt.store, args.name, args.handle)
    return {"id": cardholder_id, "name": args.name, "handle": args.handle}


async def cmd_account_open(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.iso8583.currency import exponent_for_alpha

    currency = args.currency.upper()
    try:
        exponent = exponent_for_alpha(currency)
    except KeyError:
        raise InvalidRequest(f"currency {currency} is not supported") from None
    account_id = await ledger.accounts.open_account(rt.store, args.cardholder, args.type, currency)
    if args.deposit:
        amount_minor = parse_amount_minor(args.deposit, exponent)
        if amount_minor:
            await ledger.accounts.deposit(rt.store, account_id, amount_minor, reference="opening deposit")
    return await _account_json(rt, account_id)


async def cmd_account_deposit(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.iso8583.currency import exponent_for_alpha

    view = await ledger.accounts.get(rt.store, args.account_id)
    amount_minor = parse_amount_minor(args.amount, exponent_for_alpha(view.currency))
    await ledger.accounts.deposit(rt.store, args.account_id, amount_minor, reference=args.reference)
    return await _account_json(rt, args.account_id)


async def cmd_account_show(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    return await _account_json(rt, args.account_id)


async def _account_json(rt: Runtime, account_id: int) -> dict[str, Any]:
    view = await ledger.accounts.get(rt.store, account_id)
    return {
        "id": view.id,
        "kind": view.kind,
        "currency": view.currency,
        "status": view.status,
        "ledger_minor": view.ledger_minor,
        "available_minor": view.available_minor,
        "ledger": format_minor(view.ledger_minor, view.currency),
        "available": format_minor(view.available_minor, view.currency),
        "holds": [
            {
                "id": h.id,
                "card_id": h.card_id,
                "amount_minor": h.amount_minor,
                "status": h.status,
                "expires_at": h.expires_at.isoformat() if h.expires_at else None,
            }
            for h in view.holds
        ],
    }


async def cmd_card_issue(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.issuing import issue_card

    keys = await rt.issuer_keys()
    card = await issue_card(
        rt.store,
        rt.hsm,
        keys,
        account_id=args.account,
        pin=args.pin,
        bin_prefix=await issuing.config.issuer_bin(rt.store),
        chip=not args.magstripe_only,
        active=not args.inactive,
        validity_years=args.years,
    )
    result = card.as_json()
    if args.chip:
        from processor.issuing.personalization import personalize

        _, path = await personalize(rt.store, rt.hsm, keys, card.id, directory=args.bureau_dir)
        result["bureau_file"] = str(path)
    return result


async def cmd_card_reveal(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """Detokenize for an operator: the HSM opens the sealed PAN and its audit log records who and why."""
    if not args.operator.strip() or not args.reason.strip():
        raise InvalidRequest("card reveal needs --operator and --reason")
    card = await issuing.cards.get(rt.store, args.card_id)
    pan = await rt.hsm.reveal_pan(card.sealed_pan, card.data_key_version, operator=args.operator, reason=args.reason)
    log.warning("card %d revealed by %s: %s", args.card_id, args.operator, args.reason)
    return {"id": args.card_id, "pan": pan, "token": card.token, "operator": args.operator, "reason": args.reason}


async def cmd_card_personalize(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.issuing.personalization import personalize

    keys = await rt.issuer_keys()
    record, path = await personalize(
        rt.store, rt.hsm, keys, args.card_id, directory=args.bureau_dir, cvn=args.cvn, contactless=not args.contact_only
    )
    return {"id": args.card_id, "bureau_file": str(path), "cvn": record.cvn, "aid": record.aid, "contactless": record.contactless}


async def cmd_bureau_key(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.issuing.personalization import BUREAU_KEK_CONFIG, form_bureau_key, record_bureau_key

    if args.kcv:
        return await record_bureau_key(rt.store, rt.hsm, args.kcv)
    if args.keep_if_kcv is not None:
        current = await issuing.config.get(rt.store, BUREAU_KEK_CONFIG)
        if current is not None and current == args.keep_if_kcv.upper():
            return {"kcv": current}
    if rt.settings.hsm_url.startswith("tcps://"):
        raise InvalidRequest(
            "a networked HSM forms keys under dual control: two custodians run `hsm-sim keys component KEK --algorithm AES "
            "...`, then `processor bureau key --kcv KCV` records the key"
        )
    return await form_bureau_key(rt.store, rt.hsm, args.component or None)


async def cmd_provision(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """Many funded cards and terminals at once (load runs); with --bureau-dir their chips and phones too."""
    from processor.iso8583.currency import exponent_for_alpha
    from processor.issuing.personalization import personalize
    from processor.tokenization.wallet import provision_token

    if args.cardholders < 1 or args.terminals < 1:
        raise InvalidRequest("provision needs at least one cardholder and one terminal")
    keys = await rt.issuer_keys()
    async with key_loader(rt) as loader:
        population = await issuing.provisioning.provision(
            rt.store,
            rt.hsm,
            keys,
            cardholders=args.cardholders,
            terminals=args.terminals,
            deposit_minor=parse_amount_minor(args.deposit, exponent_for_alpha(args.currency)),
            currency=args.currency,
            label=args.label,
            key_loader=loader,
        )
    result: dict[str, Any] = {"cards": population.cards, "terminals": population.terminals}
    if args.bureau_dir is not None:
        chips, wallets = [], []
        for card in population.cards:
            if card["chip_track2"] is None:
                continue  # a magstripe-only card has no chip to personalize
            _, path = await personalize(rt.store, rt.hsm, keys, card["id"], directory=args.bureau_dir)
            chips.append({"card_id": card["id"], "bureau_file": str(path)})
            if args.wallets:
                token = await provision_token(
                    rt.store, rt.hsm, keys, card_id=card["id"], wallet="phone", device_id=f"{args.label.upper()}-{card['id']}",
                    wallet_dir=args.bureau_dir,
                )
                wallets.append({"card_id": card["id"], "token_id": token["id"], "wallet_file": token["wallet_file"]})
        result["chips"] = chips
        result["wallets"] = wallets
    return result


async def cmd_card_status(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    status = CARD_ACTIONS[args.card_command]
    await issuing.cards.set_status(rt.store, args.card_id, status)
    card = await issuing.cards.get(rt.store, args.card_id)
    return {"id": args.card_id, "status": card.status, "last4": card.last4, "token": card.token}


async def cmd_card_show(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    card = await issuing.cards.get(rt.store, args.card_id)
    return {
        "id": card.card_id,
        "account_id": card.account_id,
        "status": card.status,
        "token": card.token,
        "last4": card.last4,
        "expiry": card.expiry,
        "service_code": card.service_code,
        "psn": card.psn,
        "pin_tries": card.pin_tries,
    }


async def cmd_terminal_add(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.issuing.terminals import add_terminal

    keys = await rt.issuer_keys()
    return (
        await add_terminal(
            rt.store,
            rt.hsm,
            keys,
            terminal_id=args.id,
            merchant_id=args.merchant,
            mcc=args.mcc,
            name=args.name,
            location=args.location,
            chip_capable=not args.no_chip_reader,
        )
    ).as_json()


async def cmd_terminal_batches(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    if await issuing.terminals.get(rt.store, args.terminal_id) is None:
        raise NotFound(f"terminal {args.terminal_id!r} does not exist")
    closed = await ledger.terminal_batches.list_closed(rt.store, args.terminal_id, limit=args.limit)
    open_totals = await ledger.terminal_batches.open_totals(rt.store, args.terminal_id, args.currency)
    return {
        "terminal_id": args.terminal_id,
        "open": {"currency": args.currency, **open_totals.as_json()},
        "closed": [batch.as_json() for batch in closed],
    }


async def cmd_ledger_check(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    failures = await ledger.invariants.check(rt.store)
    report = await ledger.invariants.report(rt.store)
    result = {"ok": not failures, "failures": failures, "report": report}
    if failures:
        raise LedgerBroken(result)
    return result


async def cmd_holds_expire(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    released = await ledger.holds.expire(rt.store, dt.datetime.now(dt.UTC))
    return {"expired": released}


class LedgerBroken(ProcessorError):
    """`ledger check` found violations; carries the report so --json can still print it."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(f"{len(result['failures'])} ledger invariant violation(s)")
        self.result = result


async def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from processor.server import run_server

    from processor.transport.mqtt import MqttEndpoint

    if args.mqtt:
        settings = dataclasses.replace(settings, mqtt_url=args.mqtt)
    if settings.mqtt_url:
        try:
            MqttEndpoint.parse(settings.mqtt_url)
        except ValueError as exc:
            raise ConfigurationError(f"broker URL: {exc}") from None
    if args.tcp == "off":
        if not settings.mqtt_url:
            raise ConfigurationError("--tcp off needs a broker to answer on: give --mqtt URL or set PROCESSOR_MQTT_URL")
        await run_server(settings, host="", port=0, tcp=False)
        return 0
    host, _, port = args.tcp.rpartition(":")
    if not port.isdigit():
        raise ConfigurationError(f"--tcp expects HOST:PORT or off, not {args.tcp!r}")
    await run_server(settings, host=host or "127.0.0.1", port=int(port), reuse_port=args.reuse_port)
    return 0


# ------------------------------------------------------------------ plumbing


def _safe_url(url: str) -> str:
    """A database URL without its password, for printing."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


def _print(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=None, sort_keys=False, default=str))
        return
    if isinstance(result, dict):
        for key, value in result.items():
            if isinstance(value, (list, dict)):
                value = json.dumps(value, default=str)
            print(f"{key:>16}: {value}")
    else:
        print(result)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="processor", description="Card issuing and ISO 8583 authorization.")
    parser.add_argument("--db", help="database URL (default: PROCESSOR_DB_URL or ./processor.db)")
    parser.add_argument("--hsm", help="HSM URL: file:PATH, memory:, tcps://HOST:PORT (default: PROCESSOR_HSM_URL)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_command(parent: Any, name: str, func: Callable[..., Awaitable[dict[str, Any]]], help: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help)
        p.add_argument("--json", action="store_true", help="print one JSON document")
        p.set_defaults(func=func)
        return p

    p = data_command(sub, "init", cmd_init, "create the issuer's keys and the database schema")
    p.set_defaults(hsm_role="custodian")
    p.add_argument("--bin", help="issuer BIN for new cards (6-8 digits)")

    ch = sub.add_parser("cardholder", help="cardholders").add_subparsers(dest="sub", required=True)
    p = data_command(ch, "create", cmd_cardholder_create, "create a cardholder")
    p.add_argument("--name", required=True)
    p.add_argument("--handle", required=True, help="unique handle, such as ada")

    ac = sub.add_parser("account", help="accounts").add_subparsers(dest="sub", required=True)
    p = data_command(ac, "open", cmd_account_open, "open an account")
    p.add_argument("--cardholder", type=int, required=True)
    p.add_argument("--type", choices=["checking", "savings"], default="checking")
    p.add_argument("--currency", default="EUR")
    p.add_argument("--deposit", help="opening deposit in major units, e.g. 100.00")
    p = data_command(ac, "deposit", cmd_account_deposit, "deposit into an account from the funding account")
    p.add_argument("account_id", type=int)
    p.add_argument("amount", help="major units, e.g. 25.50")
    p.add_argument("--reference", default="deposit")
    p = data_command(ac, "show", cmd_account_show, "ledger, available and holds of an account")
    p.add_argument("account_id", type=int)

    cd = sub.add_parser("card", help="cards").add_subparsers(dest="card_command", required=True)
    p = data_command(cd, "issue", cmd_card_issue, "issue a card (PAN and CVV2 are shown once)")
    p.set_defaults(hsm_role="issuer")
    p.add_argument("--account", type=int, required=True)
    p.add_argument("--pin", help="4 to 12 digits; only its verification value is kept")
    p.add_argument("--years", type=int, default=4, help="validity in years")
    p.add_argument("--magstripe-only", action="store_true", help="service code 101 instead of 201 (chip)")
    p.add_argument("--inactive", action="store_true", help="issue inactive; `card activate` later")
    p.add_argument("--chip", action="store_true", help="also write the chip personalization record for the card bureau")
    p.add_argument("--bureau-dir", default="card-bureau", help="where bureau records go (default ./card-bureau)")
    p = data_command(cd, "reveal", cmd_card_reveal, "show a card's PAN (audited: who and why)")
    p.set_defaults(hsm_role="operator")
    p.add_argument("card_id", type=int)
    p.add_argument("--operator", required=True, help="who asks")
    p.add_argument("--reason", required=True, help="why, e.g. a ticket number")
    p = data_command(cd, "personalize", cmd_card_personalize, "write a card's chip personalization record for the bureau")
    p.set_defaults(hsm_role="issuer")
    p.add_argument("card_id", type=int)
    p.add_argument("--bureau-dir", default="card-bureau")
    p.add_argument("--cvn", type=int, default=18, choices=[10, 18])
    p.add_argument("--contact-only", action="store_true", help="no contactless interface")
    p = data_command(cd, "show", cmd_card_show, "a card's status and non-secret data")
    p.add_argument("card_id", type=int)
    for action in CARD_ACTIONS:
        p = data_command(cd, action, cmd_card_status, f"card lifecycle: {action}")
        p.add_argument("card_id", type=int)

    bu = sub.add_parser("bureau", help="the card bureau that personalizes chips").add_subparsers(dest="sub", required=True)
    p = data_command(bu, "key", cmd_bureau_key, "form the transport key shared with the bureau (key ceremony)")
    p.set_defaults(hsm_role="custodian")
    p.add_argument("--component", action="append", help="a clear component (hex, 32 bytes); give two or more, or none to draw them")
    p.add_argument("--kcv", help="record the AES KEK custodians formed in a networked HSM (hsm-sim keys component) instead")
    p.add_argument("--keep-if-kcv", metavar="KCV",
                   help="keep the current transport key when its KCV is KCV (no components printed); else form a new one")

    te = sub.add_parser("terminal", help="terminals").add_subparsers(dest="sub", required=True)
    p = data_command(te, "add", cmd_terminal_add, "register a terminal; prints its key material for injection")
    p.set_defaults(hsm_role="key-loader")
    p.add_argument("--id", required=True, help="terminal id (DE 41, up to 8 characters)")
    p.add_argument("--merchant", required=True, help="merchant id (DE 42, up to 15 characters)")
    p.add_argument("--mcc", required=True, help="merchant category code")
    p.add_argument("--name", default="Merchant")
    p.add_argument("--location", default="Berlin DE")
    p.add_argument("--no-chip-reader", action="store_true",
                   help="a magstripe-only terminal: chip cards may be swiped there (else only as fallback, DE 22 80)")
    p = data_command(te, "batches", cmd_terminal_batches, "a terminal's open batch and its closed batches (0500)")
    p.add_argument("terminal_id")
    p.add_argument("--currency", default="EUR", help="currency of the open batch to total (default EUR)")
    p.add_argument("--limit", type=int, default=20, help="how many closed batches, newest first")

    p = data_command(sub, "provision", cmd_provision,
                     "issue many funded cards and terminals at once, for load runs (prints the cards' secrets once)")
    p.add_argument("--cardholders", type=int, required=True, help="one funded checking account and card each")
    p.add_argument("--terminals", type=int, default=1, help="terminals at one new merchant (default 1)")
    p.add_argument("--deposit", default="0", help="deposit per account in major units (default 0)")
    p.add_argument("--currency", default="EUR")
    p.add_argument("--label", default="load", help="names the cardholders, merchant and devices (default load)")
    p.add_argument("--bureau-dir", help="also personalize the chip cards into this folder (needs `bureau key`)")
    p.add_argument("--wallets", action="store_true", help="with --bureau-dir: a phone token for each chip card too")
    p.set_defaults(hsm_role="issuer")

    le = sub.add_parser("ledger", help="ledger").add_subparsers(dest="sub", required=True)
    data_command(le, "check", cmd_ledger_check, "check the ledger invariants (non-zero exit when broken)")
    ho = sub.add_parser("holds", help="authorization holds").add_subparsers(dest="sub", required=True)
    data_command(ho, "expire", cmd_holds_expire, "release holds past their expiry")

    from processor.tokenization.cli import register as register_tokenization
    from processor.transport.cli import register as register_transport

    register_tokenization(sub, data_command)
    register_transport(sub, data_command)

    from processor.settlement.cli import register as register_settlement

    register_settlement(sub, data_command)

    from processor.api.cli import register as register_money_app
    from processor.savings.cli import register as register_savings

    register_money_app(sub, data_command)
    register_savings(sub, data_command)

    p = sub.add_parser("serve", help="run the authorization engine")
    p.add_argument("--tcp", default="127.0.0.1:8583", help="HOST:PORT to listen on, or off (MQTT only)")
    p.add_argument("--reuse-port", action="store_true",
                   help="share the TCP port with other engine processes (SO_REUSEPORT): the kernel spreads connections")
    p.add_argument("--mqtt", help="also answer terminals through this broker: mqtt://USER:PASSWORD@HOST:PORT "
                   "(default: PROCESSOR_MQTT_URL)")
    p.set_defaults(func=None, serve=True)

    p = sub.add_parser("demo", add_help=False,
                       help="run a whole simulated business day and print its summary (`python -m demo`; see its --help)")
    p.set_defaults(func=None, demo=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_library_deprecations()
    # The database, logs, key store, audit log and bureau records hold card or key data: files 0600, folders 0700.
    os.umask(0o077)
    args, harness_args = build_parser().parse_known_args(argv)
    if getattr(args, "demo", False):
        return _run_demo(harness_args)
    if harness_args:
        build_parser().error(f"unrecognized arguments: {' '.join(harness_args)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    settings = Settings.from_env()
    if args.db or args.hsm:
        settings = Settings(
            db_url=args.db or settings.db_url,
            hsm_url=args.hsm or settings.hsm_url,
            mqtt_url=settings.mqtt_url,
            log_dir=settings.log_dir,
        )
    try:
        if getattr(args, "serve", False):
            return _run(cmd_serve(args, settings))
        if getattr(args, "standalone", None) is not None:
            from processor.transport.cli import run_standalone

            return run_standalone(args, settings)
        if getattr(args, "run", None) is not None:
            return args.run(args, settings)
        return _run(_data_command(args, settings))
    except LedgerBroken as exc:
        _print(exc.result, args.json)
        print(f"processor: {exc}", file=sys.stderr)
        return 3
    except (ProcessorError, ConfigurationError, NotFound, InvalidRequest) as exc:
        print(f"processor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if _is_user_error(exc):
            print(f"processor: {exc}", file=sys.stderr)
            return 2
        raise


def _run_demo(harness_args: list[str]) -> int:
    """`processor demo` is the harness's business day (`python -m demo`), a program that drives both the
    processor and the terminals; the processor starts it rather than importing it."""
    import importlib.util
    import os

    if importlib.util.find_spec("demo.day") is None:
        print("processor: the demo harness (package `demo`) is not installed; run scripts/demo", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "demo", *harness_args])
    return 0  # not reached: execv replaces this process


def _is_user_error(exc: Exception) -> bool:
    """Store and HSM errors carry messages written for operators."""
    from hsm_sim import HsmError
    from processor.ledger import StoreError
    from processor.transport.broker import BrokerError
    from processor.transport.mqtt import MqttUnavailable

    return isinstance(exc, (StoreError, HsmError, MqttUnavailable, BrokerError))


async def _data_command(args: argparse.Namespace, settings: Settings) -> int:
    role = getattr(args, "hsm_role", "engine")
    async with runtime(settings, role, hsm_name=args.operator if role == "operator" else None) as rt:
        result = await args.func(rt, args)
    _print(result, args.json)
    return 0


def _run(coro: Awaitable[int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
