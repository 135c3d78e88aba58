"""`terminal-sim`: simulated terminals that talk ISO 8583 to a running engine."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hsm_sim.arguments import Parser, count, host_port, port, positive
from terminal_sim.load import MqttTarget, load_json_list, parse_expect, parse_mix, run_load
from terminal_sim.load_report import ProgressDisplay, print_summary
from terminal_sim.journal import TerminalBatch
from terminal_sim.pos import CardData, PosTerminal


def _quiet_library_deprecations() -> None:
    """pyemv calls TDES the way cryptography deprecates; the warning says nothing a terminal user can act on."""
    import warnings

    from cryptography.utils import CryptographyDeprecationWarning

    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)


async def _processor_json(args: argparse.Namespace, *command: str, timeout_s: float) -> dict[str, Any]:
    """Run one `processor` command (the operator CLI, the processor's public interface) and read its --json."""
    argv = [sys.executable, "-m", "processor.cli"]
    if args.db:
        argv += ["--db", args.db]
    if args.hsm:
        argv += ["--hsm", args.hsm]
    proc = await asyncio.create_subprocess_exec(
        *argv, *command, "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ValueError(f"processor {command[0]} did not finish within {timeout_s:g} s") from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"]
        raise ValueError(f"processor {' '.join(command[:2])} failed: {lines[-1]}")
    return json.loads(out)


async def _provisioned(
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Any]]:
    """Issue our own cards and terminals through the processor's CLI (`processor provision`).

    Unless --no-chip, every chip card is also personalized for the bureau (and a phone gets a token of
    it), and its chip is returned ready to be read in process. The bureau's transport key is the one in
    TERMINAL_SIM_TRANSPORT_KEY when the processor's matches it, else a new key ceremony forms one.
    """
    import os
    import tempfile

    from hsm_sim.crypto.des import kcv
    from terminal_sim.bureau import (
        TRANSPORT_KEY_ENV,
        load_profile,
        open_record,
        read_record,
        state_path,
        transport_key_from_components,
        transport_key_from_env,
    )
    from terminal_sim.chip_pos import ChipCard

    # Enough for the slowest machine to issue a few thousand cards; a stuck processor still ends.
    timeout_s = 120.0 + 0.5 * args.provision
    command = ["provision", "--cardholders", str(args.provision), "--terminals", str(max(1, min(args.connections, 64))),
               "--deposit", "10000000.00"]
    if args.no_chip:
        issued = await _processor_json(args, *command, timeout_s=timeout_s)
        return issued["cards"], issued["terminals"], []
    transport_key = transport_key_from_env() if os.environ.get(TRANSPORT_KEY_ENV) else None
    # Without the bureau's key in the environment, a new ceremony replaces whatever key the processor has.
    keep = ["--keep-if-kcv", kcv(transport_key, "AES")] if transport_key is not None else ["--replace"]
    ceremony = await _processor_json(args, "bureau", "key", *keep, timeout_s=60.0)
    if "components" in ceremony:
        transport_key = transport_key_from_components(ceremony["components"])
    assert transport_key is not None
    with tempfile.TemporaryDirectory(prefix="terminal-sim-bureau-") as scratch:
        folder = args.bureau_dir or scratch
        issued = await _processor_json(args, *command, "--bureau-dir", folder, "--wallets", timeout_s=timeout_s)
        by_id = {card["id"]: card for card in issued["cards"]}
        wallets = {wallet["card_id"]: wallet for wallet in issued["wallets"]}
        chips = []
        for chip in issued["chips"]:
            card_id = int(chip["card_id"])
            card = by_id[card_id]
            profile = load_profile(folder, card_id, transport_key)
            chips.append(ChipCard(profile, pin=card.get("pin"), card_id=card_id, account_id=card.get("account_id"),
                                  state_path=state_path(args.bureau_dir, card_id) if args.bureau_dir else None))
            # And a phone holding a device token of the card, for the wallet kind.
            phone = open_record(read_record(wallets[card_id]["wallet_file"]), transport_key)
            chips.append(ChipCard(phone, card_id=card_id, account_id=card.get("account_id"), is_wallet=True))
    return issued["cards"], issued["terminals"], chips


async def _broker_accounts(args: argparse.Namespace, terminal_ids: list[str]) -> dict[str, str]:
    """Broker accounts for the terminals, created with `processor broker terminal` (a few at a time)."""
    slots = asyncio.Semaphore(4)

    async def account(terminal_id: str) -> tuple[str, str]:
        async with slots:
            made = await _processor_json(args, "broker", "terminal", terminal_id, "--dir", args.broker_dir, timeout_s=60.0)
        return terminal_id, str(made["mqtt_password"])

    return dict(await asyncio.gather(*(account(t) for t in dict.fromkeys(terminal_ids))))


def _bureau_chips(cards: list[dict[str, Any]], directory: str) -> list[Any]:
    """In-process chips of the cards that have a bureau record in `directory`."""
    from terminal_sim.bureau import load_profile, record_path, state_path, transport_key_from_env
    from terminal_sim.chip_pos import ChipCard

    key = transport_key_from_env()
    chips = []
    for card in cards:
        if card.get("id") is None or not record_path(directory, int(card["id"])).exists():
            continue
        card_id = int(card["id"])
        profile = load_profile(directory, card_id, key)
        chips.append(ChipCard(profile, pin=card.get("pin"), card_id=card_id, account_id=card.get("account_id"),
                              state_path=state_path(directory, card_id)))
    if not chips:
        raise ValueError(f"{directory}: none of the cards has a bureau record there")
    return chips


async def _load(args: argparse.Namespace) -> int:
    host, port = args.tcp
    # Refuse a bad mix or expectation before --provision writes anything.
    mix = parse_mix(args.mix) if args.mix else None
    expected = parse_expect(args.expect)
    chips: list[Any] = []
    if args.cards and args.terminals:
        cards_json, terminals_json = load_json_list(args.cards), load_json_list(args.terminals)
        if args.bureau_dir:
            chips = _bureau_chips(cards_json, args.bureau_dir)
    elif args.provision:
        cards_json, terminals_json, chips = await _provisioned(args)
    else:
        print("terminal-sim: give --cards and --terminals files, or --provision N", file=sys.stderr)
        return 2
    cards = [CardData.from_issued(c, c.get("pin")) for c in cards_json]
    terminals = [PosTerminal.from_registered(t) for t in terminals_json]
    mqtt = None
    if args.mqtt:
        passwords = {str(t["terminal_id"]): str(t["mqtt_password"]) for t in terminals_json if t.get("mqtt_password")}
        if args.broker_dir:
            passwords.update(await _broker_accounts(args, [t.terminal_id for t in terminals]))
        missing = [t.terminal_id for t in terminals if t.terminal_id not in passwords]
        if missing:
            print(f"terminal-sim: no broker password for terminal {missing[0]}: give each terminal an mqtt_password "
                  "in the --terminals file, or --broker-dir to create the accounts", file=sys.stderr)
            return 2
        mqtt = MqttTarget(args.mqtt, passwords, retry_after_s=args.retry_after)
    # A terminal's STAN never restarts: two runs a moment apart must not reuse (terminal, STAN, second).
    start = secrets.randbelow(900_000) + 1
    for terminal in terminals:
        terminal._stan = itertools.count(start)
    # Nor does its DUKPT counter: the engine refuses a key serial number it has seen. Terminals from a
    # file keep theirs in the same state files `pos` uses.
    states = [_state_path(args.terminals, t.terminal_id) for t in terminals] if args.terminals else []
    for terminal, state in zip(terminals, states):
        if state.exists():
            terminal.dukpt_counter = max(terminal.dukpt_counter, int(json.loads(state.read_text(encoding="utf-8")).get("dukpt_counter", 0)))
    display = ProgressDisplay()
    try:
        with display:
            result = await run_load(
                host,
                port,
                terminals,
                cards,
                connections=args.connections,
                seconds=args.seconds,
                rate=args.rate,
                mix=mix,
                timeout_s=args.timeout,
                progress=None if args.quiet else display,
                seed=args.seed,
                chip_cards=chips,
                contactless_limit_minor=args.contactless_limit,
                close_batches=args.close_batches,
                expected=expected,
                mqtt=mqtt,
                engine_pids=args.engine_pid,
                postgres_url=args.postgres_cpu,
                templates=args.templates,
            )
    finally:
        # The cards' counters go back next to their records: the next run (or `card --vpcd`) continues from them.
        for chip in chips:
            chip.save_state()
        for terminal, state in zip(terminals, states):
            _save_counter(terminal, state)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    if summary["failures"]:
        for failure in summary["failures"]:
            print(f"terminal-sim load: {failure}", file=sys.stderr)
        return 1
    return 0


def _card(args: argparse.Namespace) -> int:
    """Serve a personalized card to pcscd through vpcd until SIGINT/SIGTERM."""
    import logging
    import signal
    import threading

    from terminal_sim.bureau import load_profile, state_path
    from terminal_sim.emv.card import VirtualCard
    from terminal_sim.vpcd import VpcdCardServer, card_protocol

    if not args.vpcd:
        print("terminal-sim card: only --vpcd is offered (serve the card to pcscd's vpcd reader)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    protocol = card_protocol(args.interface == "contactless", args.protocol)
    profile = load_profile(args.bureau_dir, args.card_id, contactless=args.interface == "contactless")
    card = VirtualCard(profile, state_path(args.bureau_dir, args.card_id))
    server = VpcdCardServer(card, args.host, args.port, protocol=protocol)

    def _on_signal(signum: int, frame: object) -> None:
        server.request_stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
    threading.Thread(target=_announce, args=(server, profile, args), daemon=True).start()
    server.run_forever()
    return 0


def _announce(server: Any, profile: Any, args: argparse.Namespace) -> None:
    from terminal_sim.emv.card import mask_pan

    if server.wait_connected(30.0):
        print(
            f"card {args.card_id} ({mask_pan(profile.pan)}, {args.interface}, {server.protocol}, ATR {server.atr.hex().upper()}, "
            f"ATC {server.card.atc}) in the vpcd reader at {args.host}:{args.port}",
            file=sys.stderr,
            flush=True,
        )


def _parse_amount(text: str) -> int:
    """'12.34' -> 1234 minor units, exactly (no floats, no exponent, no NaN)."""
    from processor.iso8583.currency import parse_amount

    try:
        return parse_amount(text, 2, what="")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _money(amount_minor: int, terminal: PosTerminal) -> str:
    """Minor units as a person reads them, in the terminal's currency: 1234 -> '12.34 EUR'."""
    from processor.iso8583.currency import alpha_for_numeric, format_amount

    alpha = alpha_for_numeric(terminal.currency_numeric)
    return format_amount(amount_minor, alpha) if alpha else str(amount_minor)


def _load_terminal(path: str, terminal_id: str | None) -> tuple[PosTerminal, Any, dict[str, Any]]:
    """The terminal from its file, with its DUKPT counter and STAN carried over from its last run;
    also the state file's path and the file's entry (which may carry the terminal's mqtt_password)."""
    entries = load_json_list(path) if not Path(path).read_text(encoding="utf-8").lstrip().startswith("{") else [
        json.loads(Path(path).read_text(encoding="utf-8"))
    ]
    if terminal_id is not None:
        entries = [e for e in entries if str(e.get("terminal_id")) == terminal_id]
    if not entries:
        raise ValueError(f"{path}: no terminal {terminal_id or ''}".strip())
    terminal = PosTerminal.from_registered(entries[0])
    state = _state_path(path, terminal.terminal_id)
    if state.exists():
        saved = json.loads(state.read_text(encoding="utf-8"))
        terminal.dukpt_counter = int(saved.get("dukpt_counter", 0))
        terminal._stan = itertools.count(int(saved.get("next_stan", 1)))
        if saved.get("batch"):
            terminal.batch = TerminalBatch.from_state(saved["batch"])
    return terminal, state, entries[0]


def _state_path(path: str, terminal_id: str) -> Path:
    return Path(path).with_name(Path(path).name + f".{terminal_id}.state")


def _save_counter(terminal: PosTerminal, state: Path) -> None:
    """Write the terminal's DUKPT counter into its state file, keeping whatever else `pos` keeps there."""
    from hsm_sim.files import write_private

    saved = json.loads(state.read_text(encoding="utf-8")) if state.exists() else {}
    saved["dukpt_counter"] = max(terminal.dukpt_counter, int(saved.get("dukpt_counter", 0)))
    write_private(state, json.dumps(saved).encode())


def _save_terminal(terminal: PosTerminal, state: Path) -> None:
    from hsm_sim.files import write_private

    next_stan = int(terminal.next_stan())  # the first STAN not yet sent
    saved = {"dukpt_counter": terminal.dukpt_counter, "next_stan": next_stan, "batch": terminal.batch.as_state()}
    write_private(state, json.dumps(saved).encode())


def _connector(args: argparse.Namespace, terminal: PosTerminal, registered: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
    """Opens the terminal's link to the engine: TCP (--tcp), or its own broker account (--mqtt)."""
    if args.mqtt:
        from terminal_sim.mqtt_client import MqttTerminalConnection

        async def over_mqtt() -> Any:
            return await MqttTerminalConnection.connect(args.mqtt, terminal.terminal_id,
                                                        password=registered.get("mqtt_password"), timeout_s=args.timeout)

        return over_mqtt
    from terminal_sim.iso_client import TerminalConnection

    host, port = args.tcp

    async def over_tcp() -> Any:
        return await TerminalConnection.connect(host, port, timeout_s=args.timeout)

    return over_tcp


async def _pos(args: argparse.Namespace) -> int:
    """One chip or contactless transaction with the card in a PC/SC reader."""
    from terminal_sim.chip_pos import chip_transaction
    from terminal_sim.nfc import ContactlessTerminal, PinRequired
    from terminal_sim.pcsc import PcscReader

    terminal, state, registered = _load_terminal(args.terminal, args.terminal_id)
    reader = PcscReader(args.reader)
    reader.connect(timeout_s=args.card_timeout)
    contactless = args.interface == "contactless"
    reconnect = _connector(args, terminal, registered)

    try:
        conn = await reconnect()
        try:
            options = dict(mti=args.mti, processing_code=args.processing_code, timeout_s=args.timeout, reconnect=reconnect)
            if contactless:
                nfc = ContactlessTerminal(terminal, limit_minor=args.contactless_limit)
                try:
                    result = await nfc.tap(conn, reader.transmit, args.amount, pin=args.pin, **options)
                except PinRequired as exc:
                    print(f"terminal-sim: {exc}; give --pin", file=sys.stderr)
                    return 2
            else:
                result = await chip_transaction(conn, terminal, reader.transmit, args.amount, contactless=False,
                                                pin=args.pin, **options)
        finally:
            await conn.close()
    finally:
        _save_terminal(terminal, state)
        reader.disconnect()
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        r = result.as_json()
        print(
            f"{'APPROVED' if result.approved else 'DECLINED'} rc={r['rc']} auth={r['approval_code'] or '-'} "
            f"card={r['cryptogram']} atc={r['atc']} pan={r['pan']} amount={_money(r['amount_minor'], terminal)} stan={r['stan']}"
            + (" reversed" if r["reversed"] else "")
            + (f" ({r['reason']})" if r["reason"] and not result.approved else "")
        )
    return 0 if result.approved else 1


async def _close_batch(args: argparse.Namespace) -> int:
    """Close the terminal's batch: its totals (0500) against the engine's (0510)."""
    from terminal_sim.batch_close import close_batch

    terminal, state, registered = _load_terminal(args.terminal, args.terminal_id)
    try:
        conn = await _connector(args, terminal, registered)()
        try:
            report = await close_batch(conn, terminal, timeout_s=args.timeout)
        finally:
            await conn.close()
    finally:
        _save_terminal(terminal, state)
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        t, h = report.terminal, report.host
        print(f"batch {report.batch_number} of {report.terminal_id}: rc={report.rc or '-'} {report.reason}")
        for side, totals in (("terminal", t), ("engine", h)):
            if totals is not None:
                print(f"  {side:<8}  debits {totals.debits_count} ({_money(totals.debits_minor, terminal)})  "
                      f"credits {totals.credits_count} ({_money(totals.credits_minor, terminal)})")
    return 0 if report.in_balance else 1


def _mqtt_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mqtt", metavar="URL", help="reach the engines through this MQTT broker instead of --tcp: "
                   "mqtt://[TERMINAL:PASSWORD@]HOST:PORT (else each terminal's mqtt_password from its file)")


async def _network(args: argparse.Namespace) -> int:
    """An acquiring network's day: authorizations of its merchants, then its clearing file."""
    import datetime as dt
    from terminal_sim.iso_client import TerminalConnection
    from terminal_sim.network import AcquiringNetwork

    key = json.loads(Path(args.key).read_text(encoding="utf-8"))
    if not isinstance(key, dict):
        raise ValueError(f"{args.key} is not the network's registration (`processor settle network add --json`)")
    network = AcquiringNetwork(args.acquirer, key, merchants=args.merchants, seed=args.seed)
    if args.list_merchants:
        print(json.dumps(network.registrations()))
        return 0
    cards = [CardData.from_issued(c, c.get("pin")) for c in load_json_list(args.cards)]
    if not cards:
        raise ValueError(f"{args.cards} lists no card")
    host, port = args.tcp
    conn = await TerminalConnection.connect(host, port, timeout_s=args.timeout)
    try:
        day = await network.run(conn, cards, args.transactions)
    finally:
        await conn.close()
    business_date = dt.date.fromisoformat(args.date) if args.date else dt.date.today()
    written = network.write_clearing_file(
        day, Path(args.clearing_file), file_id=args.file_id or f"{args.acquirer}-{business_date:%Y%m%d}-{secrets.token_hex(3)}",
        business_date=business_date, scenarios=args.scenarios,
    )
    result = {**day.as_json(), "clearing_file": written}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"network {args.acquirer}: {result['authorizations']} authorizations, {result['approved']} approved {day.codes}")
        print(f"clearing file {written['path']} ({written['file_id']}): {written['records']} presentments, "
              f"control sum {written['control_sum_minor']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="terminal-sim", description="Simulated POS and NFC terminals.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "load",
        help="drive many terminal connections against a running engine",
        description="Drive many terminal connections against a running engine and report throughput, latency "
        "(percentiles to p99.99, histogram) and answers by kind. Exit 0 when every answer is one its kind expects "
        "(see --expect), nothing timed out and every batch closed in balance; 1 otherwise; 2 on a usage error.",
    )
    p.add_argument("--tcp", type=host_port, default=("127.0.0.1", 8583), help="engine HOST:PORT (default 127.0.0.1:8583)")
    _mqtt_option(p)
    p.add_argument("--broker-dir", help="with --mqtt: the processor's broker folder, to create the terminals' "
                   "broker accounts (same machine)")
    p.add_argument("--retry-after", type=positive, default=1.0,
                   help="with --mqtt: seconds before an unanswered request is published again (an engine may have died) (default 1)")
    p.add_argument("--connections", type=count, default=32, help="terminal connections at once (default 32)")
    p.add_argument("--seconds", type=positive, default=10.0, help="length of the run (default 10)")
    p.add_argument("--rate", type=positive, help="fixed overall request rate per second (default: as fast as answered)")
    p.add_argument(
        "--mix",
        help="weights, e.g. purchase=60,pin=15,manual=10,preauth=5,balance=5,refund=5,chip=20,contactless=20,wallet=10 "
        "(chip and contactless need bureau records)",
    )
    p.add_argument("--cards", help="JSON list of cards as `processor card issue --json` prints them (with a pin key)")
    p.add_argument("--terminals", help="JSON list of terminals as `processor terminal add --json` prints them")
    p.add_argument("--provision", type=count, metavar="N",
                   help="first issue this many funded cards (and terminals) with `processor provision`")
    p.add_argument("--bureau-dir", help="bureau records (card-ID.json) of the --cards, for the chip kinds; "
                   "with --provision, where the new records go (default: a temporary folder)")
    p.add_argument("--no-chip", action="store_true", help="with --provision: do not personalize chips")
    p.add_argument("--contactless-limit", type=_parse_amount, default=5000, help="above it a tap needs a PIN (default 50.00)")
    p.add_argument("--db", help="processor database URL for --provision (default: PROCESSOR_DB_URL)")
    p.add_argument("--hsm", help="processor HSM URL for --provision (default: PROCESSOR_HSM_URL)")
    p.add_argument("--timeout", type=positive, default=5.0, help="seconds before an unanswered request is reversed (default 5)")
    p.add_argument("--seed", type=int, help="random seed for a repeatable mix")
    p.add_argument("--json", action="store_true", help="print one JSON document at the end")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--templates", action="store_true",
                   help="for throughput runs: send purchase, manual, preauth, balance and refund requests from prepared "
                   "templates (card, amount, STAN, RRN, times, KSN and MAC patched in) and check their answers (code, "
                   "MAC, STAN, RRN) without decoding them in full, at a fraction of the generator's CPU; the PIN and "
                   "chip kinds, completions and reversals keep the full terminal path")
    p.add_argument("--engine-pid", type=int, action="append", metavar="PID",
                   help="a process of the engine on this machine (repeatable): report its CPU per answer (with its "
                   "children) against the decode unit, one pyiso8583 decode of the run's request measured beside the load")
    p.add_argument("--postgres-cpu", metavar="URL",
                   help="the engine's PostgreSQL database (server on this machine): also report its backends' CPU per answer")
    p.add_argument("--close-batches", action="store_true",
                   help="at the end, every terminal closes its batch (0500) and the summary says which were in balance")
    p.add_argument("--expect", action="append", metavar="KIND=CODES",
                   help="response codes a kind may get without failing the run, e.g. purchase=00 (repeatable; default: "
                   "00 or 51 for purchase, pin, manual, preauth, chip, contactless, wallet; 00 for completion, balance, refund)")
    p.set_defaults(func=_load)

    p = sub.add_parser("card", help="serve a personalized chip card (bureau record) to pcscd through vpcd")
    p.add_argument("--vpcd", action="store_true", help="connect the card to the vsmartcard vpcd reader driver")
    p.add_argument("--card-id", type=int, required=True, help="the card's id (card-ID.json in the bureau folder)")
    p.add_argument("--bureau-dir", default="card-bureau", help="folder of bureau records (default ./card-bureau)")
    p.add_argument("--interface", choices=("contact", "contactless"), default="contact",
                   help="answer as a contact (PSE) or contactless (PPSE, qVSDC) card (default contact)")
    p.add_argument("--protocol", choices=("T=0", "T=1"),
                   help="transmission protocol the ATR offers and the card speaks (default: T=0 contact, T=1 contactless)")
    p.add_argument("--host", default="127.0.0.1", help="vpcd driver address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=35963, help="vpcd driver port (default 35963)")
    p.set_defaults(func=_card)

    for name, interface, text in (
        ("pos", "contact", "one chip transaction with the card in a PC/SC reader (exit 0 approved, 1 declined)"),
        ("nfc", "contactless", "one contactless tap of the card in a PC/SC reader (exit 0 approved, 1 declined)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--tcp", type=host_port, default=("127.0.0.1", 8583), help="engine HOST:PORT (default 127.0.0.1:8583)")
        _mqtt_option(p)
        p.add_argument("--reader", default="Virtual PCD 00 00", help="PC/SC reader name (default: Virtual PCD 00 00)")
        p.add_argument("--terminal", required=True, help="terminal JSON as `processor terminal add --json` prints it; "
                       "its DUKPT counter and STAN are kept next to it in FILE.ID.state")
        p.add_argument("--terminal-id", help="which terminal when the file lists several")
        p.add_argument("--amount", type=_parse_amount, required=True, help="amount in major units, e.g. 12.34")
        p.add_argument("--pin", help="the cardholder's PIN, sent online under the terminal's DUKPT key")
        p.add_argument("--interface", choices=("contact", "contactless"), default=interface,
                       help=f"read the card through this interface (default {interface})")
        p.add_argument("--contactless-limit", type=_parse_amount, default=5000, help="above it a tap needs a PIN (default 50.00)")
        p.add_argument("--mti", choices=("0200", "0100"), default="0200", help="0200 purchase or 0100 pre-authorization (default 0200)")
        p.add_argument("--processing-code", default="000000", help="DE 3 (default 000000: purchase)")
        p.add_argument("--timeout", type=positive, default=5.0, help="seconds before an unanswered request is reversed (default 5)")
        p.add_argument("--card-timeout", type=positive, default=10.0, help="seconds to wait for a card in the reader (default 10)")
        p.add_argument("--json", action="store_true", help="print the result as one JSON document")
        p.set_defaults(func=_pos)

    p = sub.add_parser("network", help="an acquiring network: authorizations for its merchants, then its clearing file")
    p.add_argument("--tcp", type=host_port, default=("127.0.0.1", 8583), help="engine HOST:PORT (default 127.0.0.1:8583)")
    p.add_argument("--acquirer", default="400001", help="the network's acquirer id (DE 32), registered at the issuer (default 400001)")
    p.add_argument("--key", required=True, help="the network's key file: what `processor settle network add --json` printed")
    p.add_argument("--cards", required=True, help="JSON list of cards as `processor card issue --json` prints them")
    p.add_argument("--merchants", type=int, default=3, choices=range(1, 5), metavar="1-4",
                   help="merchants behind the connection (default 3)")
    p.add_argument("--list-merchants", action="store_true",
                   help="print the merchants to register (`processor settle network merchant`) as JSON, and stop")
    p.add_argument("--transactions", type=count, default=20, help="authorizations to send (default 20)")
    p.add_argument("--clearing-file", required=True, help="where the end-of-day clearing file goes (0600)")
    p.add_argument("--file-id", help="the file's id (default: acquirer, date and a random suffix)")
    p.add_argument("--date", help="the network's business date in the file header (default today)")
    p.add_argument("--scenarios", action="store_true", help="add over-tolerance, unauthorized, duplicate and refund presentments")
    p.add_argument("--seed", type=int, default=7, help="random seed of the day (default 7)")
    p.add_argument("--timeout", type=positive, default=5.0, help="seconds to wait for each answer (default 5)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(func=_network)

    p = sub.add_parser("close-batch", help="end of day: send the terminal's batch totals (0500); exit 0 in balance, 1 not")
    p.add_argument("--tcp", type=host_port, default=("127.0.0.1", 8583), help="engine HOST:PORT (default 127.0.0.1:8583)")
    _mqtt_option(p)
    p.add_argument("--terminal", required=True, help="terminal JSON file, as for `pos` (its batch is kept in FILE.ID.state)")
    p.add_argument("--terminal-id", help="which terminal when the file lists several")
    p.add_argument("--timeout", type=positive, default=5.0, help="seconds to wait for the answer (the 0500 is sent again) (default 5)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.set_defaults(func=_close_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_library_deprecations()
    os.umask(0o077)  # bureau records and card state hold card data
    args = build_parser().parse_args(argv)
    from terminal_sim.emv.kernel import CardError
    from terminal_sim.pcsc import PcscError
    from terminal_sim.vpcd import VpcdError

    try:
        if not asyncio.iscoroutinefunction(args.func):
            return args.func(args)
        return _run(args.func(args))
    except BrokenPipeError:
        # The reader went away (`terminal-sim ... | head -1`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, CardError, PcscError, VpcdError) as exc:
        print(f"terminal-sim: {exc}", file=sys.stderr)
        return 2


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
