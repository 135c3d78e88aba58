"""The operator CLI: `processor <command>`; every command that returns data accepts --json."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

from processor import issuing, ledger
from processor.commands import Runtime, amount_minor, count, listen_address, validity_years
from processor.config import ENVIRONMENT, Settings
from processor.errors import ConfigurationError, InvalidRequest, NotFound, ProcessorError
from processor.logs import quiet_library_deprecations
from processor.iso8583.currency import format_amount
from processor.output import print_result, progress

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

    settings.check()
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


# ------------------------------------------------------------------ commands


async def cmd_init(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.issuing import ensure_issuer_keys
    from processor.tokenization.wallet import DEFAULT_TOKEN_BIN, TOKEN_BIN_CONFIG

    if args.bin:
        token_bin = await issuing.config.get(rt.store, TOKEN_BIN_CONFIG) or DEFAULT_TOKEN_BIN
        check_bin(args.bin, token_bin)
    keys = await ensure_issuer_keys(rt.store, rt.hsm)
    if args.bin:
        await issuing.config.put(rt.store, issuing.config.ISSUER_BIN, args.bin)
    return {
        "db_url": _safe_url(rt.settings.db_url),
        "hsm_url": rt.settings.hsm_url,
        "bin": await issuing.config.issuer_bin(rt.store),
        "keys": keys.as_dict(),
    }


def check_bin(bin_prefix: str, token_bin: str) -> None:
    """An issuer BIN: 6 to 8 digits, outside the token BIN and the 99 range of the surrogate numbers."""
    if not (bin_prefix.isdigit() and 6 <= len(bin_prefix) <= 8):
        raise InvalidRequest(f"--bin must be 6 to 8 digits, such as 476173, got {bin_prefix!r}")
    if bin_prefix.startswith(token_bin) or token_bin.startswith(bin_prefix):
        raise InvalidRequest(f"--bin {bin_prefix} overlaps the token BIN {token_bin}: cards and tokens need ranges of their own")
    if bin_prefix.startswith("99"):
        raise InvalidRequest(f"--bin {bin_prefix} is in the 99 range kept for surrogate card numbers: choose another BIN")


async def cmd_cardholder_create(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    cardholder_id = await issuing.cardholders.create(rt.store, args.name, args.handle)
    return {"id": cardholder_id, "name": args.name, "handle": args.handle}


async def cmd_cardholder_list(rt: Runtime, args: argparse.Namespace) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "name": c.name, "handle": c.handle, "created_at": c.created_at.isoformat(timespec="seconds")}
        for c in await issuing.cardholders.list_all(rt.store)
    ]


async def _cardholder_id(rt: Runtime, text: str) -> int:
    """A cardholder named by id or by handle."""
    if text.isdigit():
        return int(text)
    found = await issuing.cardholders.find_by_handle(rt.store, text)
    if found is None:
        raise NotFound(f"no cardholder with handle {text!r}: `processor cardholder list` shows them")
    return found.id


async def cmd_account_open(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    currency = args.currency.upper()
    deposit_minor = amount_minor(args.deposit, currency, "--deposit") if args.deposit is not None else 0
    cardholder_id = await _cardholder_id(rt, args.cardholder)
    account_id = await ledger.accounts.open_account(rt.store, cardholder_id, args.type, currency, deposit_minor=deposit_minor)
    return await _account_json(rt, account_id)


async def cmd_account_deposit(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    view = await _customer_account(rt, args.account_id)
    deposit_minor = amount_minor(args.amount, view.currency)
    if not deposit_minor:
        raise InvalidRequest("a deposit must be more than 0")
    await ledger.accounts.deposit(rt.store, args.account_id, deposit_minor, reference=args.reference)
    return await _account_json(rt, args.account_id)


async def cmd_account_show(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    return await _account_json(rt, args.account_id)


async def cmd_account_list(rt: Runtime, args: argparse.Namespace) -> list[dict[str, Any]]:
    cardholder_id = await _cardholder_id(rt, args.cardholder) if args.cardholder else None
    views = await ledger.accounts.list_accounts(rt.store, cardholder_id=cardholder_id, internal=args.internal)
    return [
        {
            "id": v.id,
            "cardholder_id": v.cardholder_id,
            "kind": f"internal {v.purpose}" if v.kind == "internal" else v.kind,
            "currency": v.currency,
            "status": v.status,
            "ledger_minor": v.ledger_minor,
            "available_minor": v.available_minor,
        }
        for v in views
    ]


async def _customer_account(rt: Runtime, account_id: int) -> ledger.accounts.AccountView:
    """The account, refused when it is one of the ledger's internal accounts."""
    view = await ledger.accounts.get(rt.store, account_id)
    if view.kind == "internal":
        raise InvalidRequest(
            f"account {account_id} is the ledger's internal {view.purpose} account for {view.currency}, not a customer's: "
            "`processor account list` shows customer accounts, `processor account list --internal` the internal ones"
        )
    return view


async def _account_json(rt: Runtime, account_id: int) -> dict[str, Any]:
    view = await _customer_account(rt, account_id)
    return {
        "id": view.id,
        "cardholder_id": view.cardholder_id,
        "kind": view.kind,
        "currency": view.currency,
        "status": view.status,
        "ledger_minor": view.ledger_minor,
        "available_minor": view.available_minor,
        "ledger": format_amount(view.ledger_minor, view.currency),
        "available": format_amount(view.available_minor, view.currency),
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


async def _bureau_ready(rt: Runtime) -> None:
    """Refuse before anything is written when chips cannot be personalized (no transport key yet)."""
    from processor.issuing.personalization import BUREAU_KEK_CONFIG

    if await issuing.config.get(rt.store, BUREAU_KEK_CONFIG) is None:
        raise ConfigurationError("no transport key shared with the card bureau: run `processor bureau key` first")


async def cmd_card_issue(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.issuing import issue_card

    if args.pin is not None:
        issuing.cards.check_pin_format(args.pin)
    if args.chip and args.magstripe_only:
        raise InvalidRequest("--chip personalizes the card's chip; a --magstripe-only card has none: give one of them")
    await _customer_account(rt, args.account)
    if args.chip:
        await _bureau_ready(rt)
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

        try:
            _, path = await personalize(rt.store, rt.hsm, keys, card.id, directory=args.bureau_dir)
        except BaseException:
            # A card whose number was never shown and whose chip was never written must not stay usable.
            await issuing.cards.set_status(rt.store, card.id, "closed")
            log.error("card %d closed: its chip could not be personalized", card.id)
            raise
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

    current = await issuing.config.get(rt.store, BUREAU_KEK_CONFIG)
    if args.keep_if_kcv is not None:
        if current is not None and current == args.keep_if_kcv.upper():
            return {"kcv": current}
    elif current is not None and not args.replace and (args.kcv or "").upper() != current:
        raise InvalidRequest(
            f"a transport key (KCV {current}) is already shared with the card bureau: give --replace to form a new one "
            "(the bureau must then load it; records written before stay under the old key)"
        )
    if args.kcv:
        return await record_bureau_key(rt.store, rt.hsm, args.kcv)
    if rt.settings.hsm_url.startswith("tcps://"):
        raise InvalidRequest(
            "a networked HSM forms keys under dual control: two custodians run `hsm-sim keys component KEK --algorithm AES "
            "...`, then `processor bureau key --kcv KCV` records the key"
        )
    return await form_bureau_key(rt.store, rt.hsm, args.component or None)


async def cmd_provision(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """Many funded cards and terminals at once (load runs); with --bureau-dir their chips and phones too."""
    from processor.issuing.personalization import personalize
    from processor.tokenization.wallet import provision_token

    currency = args.currency.upper()
    deposit_minor = amount_minor(args.deposit, currency, "--deposit")
    if not (args.label.isascii() and args.label.isalnum()):
        raise InvalidRequest(f"--label must be letters and digits, got {args.label!r}")
    if args.wallets and args.bureau_dir is None:
        raise InvalidRequest("--wallets writes the phones' records into the bureau folder: give --bureau-dir too")
    if args.bureau_dir is not None:
        await _bureau_ready(rt)
    keys = await rt.issuer_keys()
    with progress("provision") as report:
        async with key_loader(rt) as loader:
            population = await issuing.provisioning.provision(
                rt.store,
                rt.hsm,
                keys,
                cardholders=args.cardholders,
                terminals=args.terminals,
                deposit_minor=deposit_minor,
                currency=currency,
                bin_prefix=await issuing.config.issuer_bin(rt.store),
                label=args.label,
                key_loader=loader,
                progress=report,
            )
        result: dict[str, Any] = {"cards": population.cards, "terminals": population.terminals}
        if args.bureau_dir is not None:
            chips, wallets = [], []
            with_chip = [card for card in population.cards if card["chip_track2"] is not None]
            for done, card in enumerate(with_chip, 1):
                _, path = await personalize(rt.store, rt.hsm, keys, card["id"], directory=args.bureau_dir)
                chips.append({"card_id": card["id"], "bureau_file": str(path)})
                if args.wallets:
                    token = await provision_token(
                        rt.store, rt.hsm, keys, card_id=card["id"], wallet="phone",
                        device_id=f"{args.label.upper()}-{card['id']}", wallet_dir=args.bureau_dir,
                    )
                    wallets.append({"card_id": card["id"], "token_id": token["id"], "wallet_file": token["wallet_file"]})
                report("chips", done, len(with_chip))
            result["chips"] = chips
            result["wallets"] = wallets
    if not args.json:
        return _provision_summary(result, population.merchant_id)
    return result


def _provision_summary(result: dict[str, Any], merchant_id: str) -> dict[str, Any]:
    """For people: what was made and where to find it, not hundreds of card secrets on a terminal."""
    cards, terminals = result["cards"], result["terminals"]
    summary: dict[str, Any] = {
        "cards": f"{len(cards)} (ids {cards[0]['id']}-{cards[-1]['id']}; `processor card list`; --json shows their numbers once)",
        "terminals": f"{len(terminals)} at merchant {merchant_id} (`processor terminal list --merchant {merchant_id}`)",
    }
    if "chips" in result:
        summary["chips"] = len(result["chips"])
        summary["wallets"] = len(result["wallets"])
    return summary


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


async def cmd_card_list(rt: Runtime, args: argparse.Namespace) -> list[dict[str, Any]]:
    return [
        {
            "id": card.card_id,
            "account_id": card.account_id,
            "status": card.status,
            "last4": card.last4,
            "expiry": card.expiry,
            "service_code": card.service_code,
            "currency": card.currency,
            "token": card.token,
        }
        for card in await issuing.cards.list_cards(rt.store, account_id=args.account, status=args.status)
    ]


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
    events_url = args.events_mqtt or os.environ.get("PROCESSOR_EVENTS_MQTT_URL") or None
    if events_url == "off":
        events_url = None
    if events_url:
        try:
            MqttEndpoint.parse(events_url)
        except ValueError as exc:
            raise ConfigurationError(f"events broker URL: {exc}") from None
    if args.tcp == "off":
        if not settings.mqtt_url:
            raise ConfigurationError("--tcp off needs a broker to answer on: give --mqtt URL or set PROCESSOR_MQTT_URL")
        settings.check()
        await run_server(settings, host="", port=0, tcp=False, events_url=events_url)
        return 0
    host, port = listen_address(args.tcp)
    settings.check()
    await run_server(settings, host=host, port=port, reuse_port=args.reuse_port, events_url=events_url)
    return 0


# ------------------------------------------------------------------ plumbing


def _safe_url(url: str) -> str:
    """A database URL without its password, for printing."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        ):
            text += " (default: %(default)s)"
        return text


GLOBAL_OPTIONS_HELP = {
    "--db": "database URL (default: PROCESSOR_DB_URL or sqlite in ./processor.db)",
    "--hsm": "HSM URL: file:PATH, memory:, tcps://HOST:PORT (default: PROCESSOR_HSM_URL or file:./hsm-keystore.json)",
    "--verbose": "log at debug level; on an unexpected error, show the traceback",
}


def _add_global_options(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    parser.add_argument("--db", default=default, help=GLOBAL_OPTIONS_HELP["--db"])
    parser.add_argument("--hsm", default=default, help=GLOBAL_OPTIONS_HELP["--hsm"])
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help=GLOBAL_OPTIONS_HELP["--verbose"])


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below `parser` (commands and their subcommands)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:  # argparse offers no public way to walk its subcommands
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *_subcommands(child)]
    return found


def _environment_epilog() -> str:
    lines = ["environment:"]
    width = max(len(name) for name, _ in ENVIRONMENT) + 2
    lines += [f"  {name:<{width}}{meaning}" for name, meaning in ENVIRONMENT]
    lines.append("global options (--db, --hsm, -v) may also follow the command: processor card list --db URL")
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A usage mistake in one line (the usage is one --help away)."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="processor", description="Card issuing and ISO 8583 authorization.", epilog=_environment_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_command(parent: Any, name: str, func: Callable[..., Awaitable[Any]], help: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print one JSON document (for machines)")
        p.set_defaults(func=func)
        return p

    p = data_command(sub, "init", cmd_init, "create the issuer's keys and the database schema")
    p.set_defaults(hsm_role="custodian")
    p.add_argument("--bin", help="issuer BIN for new cards, 6 to 8 digits (default: 476173, or the one set before)")

    ch = sub.add_parser("cardholder", help="cardholders").add_subparsers(dest="sub", required=True, metavar="COMMAND")
    p = data_command(ch, "create", cmd_cardholder_create, "create a cardholder")
    p.add_argument("--name", required=True, help="the cardholder's full name")
    p.add_argument("--handle", required=True, help="unique handle, such as ada")
    data_command(ch, "list", cmd_cardholder_list, "every cardholder, oldest first")

    ac = sub.add_parser("account", help="accounts").add_subparsers(dest="sub", required=True, metavar="COMMAND")
    p = data_command(ac, "open", cmd_account_open, "open an account, with its opening deposit in the same transaction")
    p.add_argument("--cardholder", required=True, help="the owner: cardholder id or handle")
    p.add_argument("--type", choices=["checking", "savings"], default="checking", help="account type")
    p.add_argument("--currency", default="EUR", help="ISO 4217 alpha code")
    p.add_argument("--deposit", help="opening deposit in major units, e.g. 100.00 (default: none)")
    p = data_command(ac, "deposit", cmd_account_deposit, "deposit into an account from the funding account")
    p.add_argument("account_id", type=int, help="the customer account")
    p.add_argument("amount", help="major units, e.g. 25.50")
    p.add_argument("--reference", default="deposit", help="recorded with the journal entry")
    p = data_command(ac, "show", cmd_account_show, "ledger, available and holds of a customer account")
    p.add_argument("account_id", type=int, help="the customer account")
    p = data_command(ac, "list", cmd_account_list, "customer accounts with their balances, oldest first")
    p.add_argument("--cardholder", help="only this cardholder's (id or handle) (default: everyone's)")
    p.add_argument("--internal", action="store_true", help="the ledger's internal accounts (funding, clearing, fees) instead")

    cd = sub.add_parser("card", help="cards").add_subparsers(dest="card_command", required=True, metavar="COMMAND")
    p = data_command(cd, "issue", cmd_card_issue, "issue a card (PAN and CVV2 are shown once)")
    p.set_defaults(hsm_role="issuer")
    p.add_argument("--account", type=int, required=True, help="the customer account the card spends from")
    p.add_argument("--pin", help="4 to 12 digits; only its verification value is kept (default: no PIN)")
    p.add_argument("--years", type=validity_years, default=4, help="validity in years, 1 to 10")
    p.add_argument("--magstripe-only", action="store_true", help="service code 101 instead of 201 (chip)")
    p.add_argument("--inactive", action="store_true", help="issue inactive; `card activate` later")
    p.add_argument("--chip", action="store_true", help="also write the chip personalization record for the card bureau")
    p.add_argument("--bureau-dir", default="card-bureau", help="where bureau records go")
    p = data_command(cd, "list", cmd_card_list, "cards with their status, oldest first (no card numbers)")
    p.add_argument("--account", type=int, help="only this account's cards (default: all)")
    p.add_argument("--status", choices=sorted(issuing.cards.CARD_STATUSES), help="only cards in this status (default: all)")
    p = data_command(cd, "reveal", cmd_card_reveal, "show a card's PAN (audited: who and why)")
    p.set_defaults(hsm_role="operator")
    p.add_argument("card_id", type=int, help="the card")
    p.add_argument("--operator", required=True, help="who asks")
    p.add_argument("--reason", required=True, help="why, e.g. a ticket number")
    p = data_command(cd, "personalize", cmd_card_personalize, "write a card's chip personalization record for the bureau")
    p.set_defaults(hsm_role="issuer")
    p.add_argument("card_id", type=int, help="the card")
    p.add_argument("--bureau-dir", default="card-bureau", help="where bureau records go")
    p.add_argument("--cvn", type=int, default=18, choices=[10, 18], help="cryptogram version number")
    p.add_argument("--contact-only", action="store_true", help="no contactless interface")
    p = data_command(cd, "show", cmd_card_show, "a card's status and non-secret data")
    p.add_argument("card_id", type=int, help="the card")
    for action in CARD_ACTIONS:
        p = data_command(cd, action, cmd_card_status, f"card lifecycle: {action}")
        p.add_argument("card_id", type=int, help="the card")

    bu = sub.add_parser("bureau", help="the card bureau that personalizes chips").add_subparsers(
        dest="sub", required=True, metavar="COMMAND"
    )
    p = data_command(bu, "key", cmd_bureau_key, "form the transport key shared with the bureau (key ceremony)")
    p.set_defaults(hsm_role="custodian")
    p.add_argument("--component", action="append",
                   help="a clear component (hex, 32 bytes); give two or more (default: two are drawn and shown once)")
    p.add_argument("--kcv", help="record the AES KEK custodians formed in a networked HSM (hsm-sim keys component) instead")
    p.add_argument("--keep-if-kcv", metavar="KCV",
                   help="keep the current transport key when its KCV is KCV (no components printed); else form a new one")
    p.add_argument("--replace", action="store_true",
                   help="replace the current transport key (the bureau must load the new one; records made before stay under the old)")

    te = sub.add_parser("terminal", help="terminals").add_subparsers(dest="sub", required=True, metavar="COMMAND")
    p = data_command(te, "add", cmd_terminal_add, "register a terminal; prints its key material for injection")
    p.set_defaults(hsm_role="key-loader")
    p.add_argument("--id", required=True, help="terminal id (DE 41, up to 8 characters)")
    p.add_argument("--merchant", required=True, help="merchant id (DE 42, up to 15 characters)")
    p.add_argument("--mcc", required=True, help="merchant category code (4 digits)")
    p.add_argument("--name", default="Merchant", help="the merchant's name, when the merchant is new")
    p.add_argument("--location", default="Berlin DE", help="the merchant's city and country, when the merchant is new")
    p.add_argument("--no-chip-reader", action="store_true",
                   help="a magstripe-only terminal: chip cards may be swiped there (else only as fallback, DE 22 80)")
    p = data_command(te, "batches", cmd_terminal_batches, "a terminal's open batch and its closed batches (0500)")
    p.add_argument("terminal_id", help="the terminal (DE 41)")
    p.add_argument("--currency", default="EUR", help="currency of the open batch to total")
    p.add_argument("--limit", type=count, default=20, help="how many closed batches, newest first")

    p = data_command(sub, "provision", cmd_provision,
                     "issue many funded cards and terminals at once, for load runs (--json prints the cards' secrets once)")
    p.add_argument("--cardholders", type=count, required=True, help="one funded checking account and card each")
    p.add_argument("--terminals", type=count, default=1, help="terminals at one new merchant")
    p.add_argument("--deposit", default="0", help="deposit per account in major units")
    p.add_argument("--currency", default="EUR", help="ISO 4217 alpha code of the accounts")
    p.add_argument("--label", default="load", help="names the cardholders, merchant and devices (letters and digits)")
    p.add_argument("--bureau-dir", help="also personalize the chip cards into this folder (needs `bureau key`) (default: no chips)")
    p.add_argument("--wallets", action="store_true", help="with --bureau-dir: a phone token for each chip card too")
    p.set_defaults(hsm_role="issuer")

    le = sub.add_parser("ledger", help="ledger").add_subparsers(dest="sub", required=True, metavar="COMMAND")
    data_command(le, "check", cmd_ledger_check, "check the ledger invariants (non-zero exit when broken)")
    ho = sub.add_parser("holds", help="authorization holds").add_subparsers(dest="sub", required=True, metavar="COMMAND")
    data_command(ho, "expire", cmd_holds_expire, "release holds past their expiry")

    from processor.tokenization.cli import register as register_tokenization
    from processor.transport.cli import register as register_transport
    from processor.auth.cli import register as register_auth

    register_tokenization(sub, data_command)
    register_transport(sub, data_command)
    register_auth(sub, data_command)

    from processor.settlement.cli import register as register_settlement

    register_settlement(sub, data_command)

    from processor.api.cli import register as register_money_app
    from processor.savings.cli import register as register_savings

    register_money_app(sub, data_command)
    register_savings(sub, data_command)

    p = sub.add_parser("serve", help="run the authorization engine")
    p.add_argument("--tcp", default="127.0.0.1:8583", help="HOST:PORT to listen on (port 0: any free one), or off (MQTT only)")
    p.add_argument("--reuse-port", action="store_true",
                   help="share the TCP port with other engine processes (SO_REUSEPORT): the kernel spreads connections")
    p.add_argument("--mqtt", help="also answer terminals through this broker: mqtt://USER:PASSWORD@HOST:PORT "
                   "(default: PROCESSOR_MQTT_URL)")
    p.add_argument("--events-mqtt", metavar="URL",
                   help="also publish the outbox's events to this broker with its events account, "
                   "mqtt://events:PASSWORD@HOST:PORT (default: PROCESSOR_EVENTS_MQTT_URL; off: do not); of several "
                   "engines one publishes at a time, the others stand by")
    p.set_defaults(func=None, serve=True)

    p = sub.add_parser("demo", add_help=False,
                       help="run a whole simulated business day and print its summary (`python -m demo`; see its --help)")
    p.set_defaults(func=None, demo=True)

    # Global options work after the command too (`processor card list --db URL`); there they default to
    # nothing, so that the value given before the command stands.
    for child in _subcommands(parser):
        child.formatter_class = HelpFormatter
        if child.prog.split()[-1] != "demo" and not any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
            _add_global_options(child, default=argparse.SUPPRESS)
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
    try:
        settings = Settings.from_env()
        if args.db or args.hsm:
            settings = dataclasses.replace(settings, db_url=args.db or settings.db_url, hsm_url=args.hsm or settings.hsm_url)
        if getattr(args, "serve", False):
            return _run(cmd_serve(args, settings))
        if getattr(args, "standalone", None) is not None:
            from processor.transport.cli import run_standalone

            return run_standalone(args, settings)
        if getattr(args, "run", None) is not None:
            return args.run(args, settings)
        return _run(_data_command(args, settings))
    except LedgerBroken as exc:
        print_result(exc.result, getattr(args, "json", False))
        print(f"processor: {exc}", file=sys.stderr)
        return 3
    except ProcessorError as exc:
        print(f"processor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _output_closed()
    except Exception as exc:
        message = operator_message(exc)
        if message is None or args.verbose:
            raise
        print(f"processor: {message}", file=sys.stderr)
        return 2


def _output_closed() -> int:
    """The reader of our output went away (`processor card list | head -1`): stop quietly, as other tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    return 141  # 128 + SIGPIPE, what a shell reports for a program a pipe stopped


def operator_message(exc: BaseException) -> str | None:
    """One line for an error an operator causes or can fix (a database, HSM, broker or port problem); None
    for a fault in the program, which keeps its traceback."""
    import errno

    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from hsm_sim import HsmError
    from processor.ledger import StoreError
    from processor.transport.broker import BrokerError
    from processor.transport.mqtt import MqttUnavailable

    if isinstance(exc, (StoreError, HsmError, MqttUnavailable, BrokerError)):
        return str(exc)
    if isinstance(exc, (ArgumentError, NoSuchModuleError)):
        return f"the database URL cannot be used ({exc}): check --db or PROCESSOR_DB_URL"
    if isinstance(exc, DBAPIError):
        detail = str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0]
        if "readonly" in detail.replace("-", "") or "read-only" in detail or "read only" in detail:
            return f"the database is read-only ({detail}): give the processor a database it may write to"
        if isinstance(exc.orig, OSError) or exc.connection_invalidated:
            return f"the database is unreachable ({detail}): check --db or PROCESSOR_DB_URL"
        return None
    if isinstance(exc, OSError):
        if exc.errno == errno.EADDRINUSE:
            return f"cannot listen ({exc.strerror}): stop the program that uses the port, or choose another"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOENT, errno.EADDRNOTAVAIL):
            where = f": {exc.filename}" if exc.filename else ""
            return f"{exc.strerror}{where}"
    return None


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


async def _data_command(args: argparse.Namespace, settings: Settings) -> int:
    role = getattr(args, "hsm_role", "engine")
    async with runtime(settings, role, hsm_name=args.operator if role == "operator" else None) as rt:
        result = await args.func(rt, args)
    print_result(result, args.json)
    return 0


def _run(coro: Awaitable[int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
