"""`python -m demo` (also `processor demo`, `scripts/demo`): a whole simulated business day on the embedded
default (SQLite, in-process HSM).

The day issues cardholders, accounts and cards, starts the engine on a TCP port, plays the situations a
real issuer meets (approvals, declines for funds, wrong PIN, wrong CVV2, expired, frozen, lost and stolen
cards, pre-authorization with increment and completion, reversals, duplicates, refunds, advices, a
malformed message), then a load phase of mixed traffic, and ends with the ledger check and a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from hsm_sim import HsmApi
from processor import issuing, ledger
from processor.config import Settings
from processor.issuing.keys import IssuerKeys
from processor.ledger import StoreInterface
from processor.server import RunningEngine
from terminal_sim.iso_client import TerminalConnection
from terminal_sim.load import LoadResult, run_load
from terminal_sim.load_report import ProgressDisplay
from terminal_sim.pos import CardData, PosTerminal

log = logging.getLogger("demo")


@dataclass
class Scenario:
    """One situation of the day: what was sent, what the issuer should answer, what it answered."""

    name: str
    expected: str
    got: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.got == self.expected


@dataclass
class Day:
    """Everything the day produced, for the summary."""

    workdir: Path
    scenarios: list[Scenario] = field(default_factory=list)
    load: LoadResult | None = None
    balances: dict[str, Any] = field(default_factory=dict)
    ledger_failures: list[str] = field(default_factory=list)
    ledger_report: dict[str, Any] = field(default_factory=dict)
    settlement: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


async def _people(store: StoreInterface, hsm: HsmApi, keys: IssuerKeys, today: dt.date) -> dict[str, dict[str, Any]]:
    """The named customers whose cards play the scenarios: (handle, deposit, card status, expired?, chip?)."""
    from processor.issuing import issue_card

    cast = [
        ("ada", "Ada Lovelace", 500_00, "active", False, True),
        ("grace", "Grace Hopper", 300_00, "active", False, True),
        ("bob", "Bob Low-Funds", 10_00, "active", False, False),
        ("carol", "Carol Frozen", 100_00, "frozen", False, True),
        ("dave", "Dave Lost", 100_00, "lost", False, True),
        ("erin", "Erin Stolen", 100_00, "stolen", False, True),
        ("frank", "Frank Expired", 100_00, "active", True, True),
        ("hana", "Hana Chip", 300_00, "active", False, True),
    ]
    people: dict[str, dict[str, Any]] = {}
    for handle, name, deposit, status, expired, chip in cast:
        cardholder_id = await issuing.cardholders.create(store, name, handle)
        account_id = await ledger.accounts.open_account(store, cardholder_id, "checking", "EUR")
        await ledger.accounts.deposit(store, account_id, deposit, reference="salary")
        issued_on = today.replace(year=today.year - 5) if expired else today
        card = await issue_card(store, hsm, keys, account_id=account_id, pin="1234", today=issued_on, chip=chip)
        if status != "active":
            await issuing.cards.set_status(store, card.id, status)
        people[handle] = {**card.as_json(), "pin": "1234", "account_id": account_id}
    return people


async def _terminals(store: StoreInterface, hsm: HsmApi, keys: IssuerKeys) -> dict[str, PosTerminal]:
    from processor.issuing.terminals import add_terminal

    # The fuel pump is an old unattended one with a stripe reader only: chip cards are swiped there.
    layout = {
        "grocery": ("GROC0001", "GROCERY000001", "5411", "Corner Grocery", True),
        "hotel": ("HOTL0001", "HOTEL00000001", "7011", "Grand Hotel", True),
        "fuel": ("FUEL0001", "FUEL000000001", "5541", "Fuel Station", False),
        "online": ("WEB00001", "WEBSHOP000001", "5999", "Web Shop", True),
    }
    terminals = {}
    for label, (tid, mid, mcc, name, chip_reader) in layout.items():
        registered = await add_terminal(
            store, hsm, keys, terminal_id=tid, merchant_id=mid, mcc=mcc, name=name, location="Berlin DE",
            chip_capable=chip_reader,
        )
        terminals[label] = PosTerminal.from_registered(registered.as_json())
        terminals[label].name_location = f"{name:<23}{'Berlin':<13}DE"
    return terminals


async def _personalize_chip_and_wallet(
    store: StoreInterface, hsm: HsmApi, keys: IssuerKeys, workdir: Path, card_id: int, account_id: int
) -> tuple[Any, dict[str, Any]]:
    """A key ceremony with the bureau, the chip written from its record, and a phone with a token of the card."""
    from processor.issuing.personalization import form_bureau_key, personalize

    from terminal_sim.bureau import load_profile, transport_key_from_components
    from terminal_sim.chip_pos import ChipCard

    from processor.tokenization import provision_token

    from terminal_sim.bureau import open_record, read_record
    from terminal_sim.emv.card import VirtualCard

    ceremony = await form_bureau_key(store, hsm)
    _, path = await personalize(store, hsm, keys, card_id, directory=workdir / "card-bureau", cvn=18)
    transport_key = transport_key_from_components(ceremony["components"])
    profile = load_profile(path.parent, card_id, transport_key)
    token = await provision_token(
        store, hsm, keys, card_id=card_id, wallet="phone", device_id="HANA-PHONE-1", wallet_dir=str(workdir / "card-bureau")
    )
    phone = VirtualCard(open_record(read_record(token["wallet_file"]), transport_key))
    wallet = {"id": token["id"], "token": token["token"], "phone": phone}
    return ChipCard(profile, pin="1234", card_id=card_id, account_id=account_id), wallet


async def _play_scenarios(
    day: Day, host: str, port: int, people: dict[str, dict[str, Any]], terminals: dict[str, PosTerminal], store: StoreInterface
) -> None:
    conn = await TerminalConnection.connect(host, port, timeout_s=5.0, terminals=list(terminals.values()))
    try:
        card = {h: CardData.from_issued(p, p["pin"]) for h, p in people.items()}
        chip = people["hana"]["chip"]
        shop, hotel, web = terminals["grocery"], terminals["hotel"], terminals["online"]
        # The fuel station's stripe reader swipes chip cards too: the day's PIN-pad scenarios happen there.
        fuel = terminals["fuel"]

        by_id = {t.terminal_id: t for t in terminals.values()}

        async def play(name: str, expected: str, request: dict[str, Any]) -> dict[str, Any]:
            answer = await conn.request(request)
            terminal = by_id.get(str(request.get("41", "")).strip())
            if terminal is not None:
                terminal.batch.record(request, answer)
            scenario = Scenario(name, expected, str(answer.get("39")))
            day.scenarios.append(scenario)
            return answer

        await play("echo test", "00", shop.echo("301"))
        await play("sign-on", "00", shop.echo("001"))
        await play("purchase with online PIN (DUKPT)", "00", fuel.card_request(card["ada"], 42_50, entry="magstripe", with_pin=True))
        await play("magstripe purchase (card without a chip)", "00", shop.card_request(card["bob"], 2_00, entry="magstripe"))
        # A terminal that ignores the rule and swipes a chip card anyway: the issuer refuses the stripe.
        careless = dataclasses.replace(shop, chip_capable=False)
        await play("chip card swiped at a chip terminal", "57", careless.card_request(card["ada"], 12_00, entry="magstripe"))
        await play("fallback: chip unreadable, stripe read (DE 22 80)", "00", shop.card_request(card["ada"], 12_00, entry="fallback"))
        await play("fallback above the fallback limit", "57", shop.card_request(card["ada"], 300_00, entry="fallback"))
        await play("online purchase with CVV2", "00", web.card_request(card["ada"], 19_99, entry="manual", cvv2=card["ada"].cvv2))
        wrong_cvv2 = "000" if card["ada"].cvv2 != "000" else "111"
        await play("online purchase, wrong CVV2", "N7", web.card_request(card["ada"], 19_99, entry="manual", cvv2=wrong_cvv2))
        await play("wrong PIN (1st)", "55", fuel.card_request(card["grace"], 5_00, entry="magstripe", with_pin=True, pin="9999"))
        await play("wrong PIN (2nd)", "55", fuel.card_request(card["grace"], 5_00, entry="magstripe", with_pin=True, pin="9998"))
        await play("wrong PIN (3rd): tries exceeded", "75", fuel.card_request(card["grace"], 5_00, entry="magstripe", with_pin=True, pin="9997"))
        await play("right PIN after the limit", "75", fuel.card_request(card["grace"], 5_00, entry="magstripe", with_pin=True))
        await play("insufficient funds", "51", shop.card_request(card["bob"], 50_00, entry="magstripe"))
        partial = await play("partial approval", "10", shop.card_request(card["bob"], 50_00, entry="magstripe", partial_ok=True))
        day.scenarios[-1].detail = f"approved {int(partial.get('4', '0'))} of 5000 minor units"
        await play("frozen card", "62", fuel.card_request(card["carol"], 5_00, entry="magstripe"))
        await play("lost card", "41", fuel.card_request(card["dave"], 5_00, entry="magstripe"))
        await play("stolen card", "43", fuel.card_request(card["erin"], 5_00, entry="magstripe"))
        await play("expired card", "54", fuel.card_request(card["frank"], 5_00, entry="magstripe"))
        stranger = CardData(pan="4000000000000002", expiry="3012", track2="4000000000000002=30121010000000000", cvv2="123")
        await play("card not issued here", "14", shop.card_request(stranger, 5_00, entry="magstripe"))

        preauth = hotel.card_request(card["ada"], 150_00, mti="0100", entry="manual", cvv2=card["ada"].cvv2)
        await play("hotel pre-authorization", "00", preauth)
        await play("incremental authorization", "00", hotel.incremental(preauth, 30_00))
        await play("completion for less than held", "00", hotel.completion(preauth, 170_00))

        purchase = fuel.card_request(card["ada"], 7_25, entry="magstripe", with_pin=True)
        first = await play("purchase", "00", purchase)
        again = await play("retransmitted purchase (duplicate)", "00", dict(purchase))
        same = first.get("38") == again.get("38")
        day.scenarios[-1].detail = "same approval code, no second posting" if same else "DIFFERENT approval code"
        if not same:
            day.scenarios[-1].got = "mismatch"
        await play("reversal", "00", fuel.reversal(purchase))
        await play("repeated reversal changes nothing", "00", fuel.reversal(purchase))
        orphan = dict(purchase)
        orphan["11"] = "999999"
        await play("reversal of an unknown original", "25", fuel.reversal(orphan))

        pump = fuel.card_request(card["ada"], 100_00, mti="0100", entry="magstripe")
        await play("fuel pre-authorization", "00", pump)
        await play("partial reversal: fuel pumped for 35.00", "00", fuel.reversal(pump, remaining_minor=35_00))
        await play("refund", "00", fuel.card_request(card["ada"], 5_00, processing_code="200000", entry="magstripe"))
        await play("balance inquiry", "00", fuel.card_request(card["ada"], 0, processing_code="310000", entry="magstripe", with_pin=True))
        await play(
            "stand-in advice past available funds",
            "00",
            shop.card_request(card["bob"], 80_00, mti="0120", entry="magstripe"),
        )
        await _chip_scenarios(day, conn, terminals["grocery"], chip)
        await _wallet_scenarios(day, conn, terminals["grocery"], people["hana"]["wallet"], store)
        await _close_batches(day, conn, terminals)
        await play("sign-off", "00", shop.echo("002"))
    finally:
        await conn.close()
    await _malformed(day, host, port)


async def _close_batches(day: Day, conn: TerminalConnection, terminals: dict[str, PosTerminal]) -> None:
    """End of day at every merchant: each terminal's totals (0500) against the issuer's."""
    from terminal_sim.batch_close import close_batch

    web = terminals["online"]
    # The web shop's journal lost its last sale (a crash between the answer and the write): out of balance.
    if web.batch.items:
        web.batch.items.popitem()
    for label, terminal in terminals.items():
        report = await close_batch(conn, terminal, timeout_s=5.0)
        lost = label == "online"
        scenario = Scenario(
            f"batch close {terminal.terminal_id}" + (" with a sale missing at the terminal" if lost else ""),
            "95" if lost else "00",
            str(report.rc),
        )
        scenario.detail = report.terminal.describe()
        if report.host is not None and report.host != report.terminal:
            scenario.detail += f"; issuer: {report.host.describe()}"
        day.scenarios.append(scenario)


async def _chip_scenarios(day: Day, conn: TerminalConnection, terminal: PosTerminal, chip: Any) -> None:
    """A personalized chip card: contact with PIN, a contactless tap, and a replayed cryptogram."""
    from terminal_sim.chip_pos import chip_transaction

    card = chip.insert(contactless=False)
    contact = await chip_transaction(conn, terminal, card.process_apdu, 23_40, contactless=False, pin="1234")
    chip.remove(card)
    day.scenarios.append(
        Scenario("chip card with PIN: ARQC verified, card accepts ARPC", "00 TC", f"{contact.rc} {contact.cryptogram}")
    )
    card = chip.insert(contactless=True)
    tap = await chip_transaction(conn, terminal, card.process_apdu, 8_90, contactless=True)
    chip.remove(card)
    day.scenarios.append(Scenario("contactless tap", "00", str(tap.rc)))
    # The tap's cryptogram sent again by the terminal as a new request: the card's ATC did not move.
    replay = dict(tap.request)
    replay["11"] = terminal.next_stan()
    answer = await conn.request(replay)
    day.scenarios.append(Scenario("replayed chip cryptogram (same ATC)", "82", str(answer.get("39"))))


async def _wallet_scenarios(day: Day, conn: TerminalConnection, terminal: PosTerminal, wallet: dict[str, Any], store: StoreInterface) -> None:
    """A phone's device token: a tap answered with the token, then the token suspended."""
    from processor.tokenization import suspend_token

    from terminal_sim.nfc import ContactlessTerminal

    reader = ContactlessTerminal(terminal)
    tap = await reader.tap_wallet(conn, wallet["phone"].process_apdu, 6_50)
    answered_with_token = tap.answer is not None and tap.answer.get("2") == wallet["token"]
    day.scenarios.append(
        Scenario("wallet tap: token mapped to the card, answered with the token", "00 token", f"{tap.rc} {'token' if answered_with_token else 'PAN'}")
    )
    await suspend_token(store, wallet["id"], reason="phone reported lost")
    tap = await reader.tap_wallet(conn, wallet["phone"].process_apdu, 6_50)
    day.scenarios.append(Scenario("wallet tap with the token suspended", "62", str(tap.rc)))


async def _malformed(day: Day, host: str, port: int) -> None:
    """A request with a non-numeric amount gets a 30 answer and the connection keeps serving."""
    from processor.iso8583 import encode_frame

    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5.0)
    try:
        bitmap = bytes.fromhex("3020000000C00000")  # DE 3, 4, 11, 41, 42
        body = b"0200" + bitmap + b"000000" + b"00000000X000" + b"000123" + b"GROC0001" + b"GROCERY000001  "
        writer.write(encode_frame(body))
        await writer.drain()
        header = await asyncio.wait_for(reader.readexactly(2), timeout=5.0)
        payload = await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), timeout=5.0)
        from processor.iso8583 import decode

        answer = decode(payload)
        day.scenarios.append(Scenario("malformed amount gets a format error", "30", str(answer.get("39"))))
    finally:
        writer.close()


_ERR = Console(stderr=True, highlight=False)


def _phase(text: str) -> None:
    """Say on standard error what the day does now; the summary stays alone on standard output."""
    _ERR.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")


async def run_day(
    workdir: Path, *, cardholders: int = 40, seconds: float = 8.0, connections: int = 16
) -> Day:
    """Play a whole day in `workdir` and return what happened."""
    from hsm_sim import connect
    from processor.issuing import ensure_issuer_keys
    from processor.issuing.provisioning import provision
    from processor.ledger import Store
    from processor.output import progress
    from processor.server import running_engine

    _phase(f"opening the store and the HSM in {workdir}")
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env(workdir)
    day = Day(workdir=workdir)
    log_handler = _log_to(workdir / "processor.log")

    store = await Store.open(settings.db_url)
    try:
        hsm = await connect(settings.hsm_url)
        try:
            keys = await ensure_issuer_keys(store, hsm)
            today = dt.datetime.now(dt.UTC).date()
            _phase("issuing the day's cardholders, cards, chip and phone, and terminals")
            people = await _people(store, hsm, keys, today)
            people["hana"]["chip"], people["hana"]["wallet"] = await _personalize_chip_and_wallet(
                store, hsm, keys, workdir, people["hana"]["id"], people["hana"]["account_id"]
            )
            terminals = await _terminals(store, hsm, keys)
            _phase(f"provisioning {cardholders} customers for the load phase")
            with progress("demo") as report:
                crowd = await provision(
                    store, hsm, keys, cardholders=cardholders, terminals=max(1, connections // 2), deposit_minor=100_000_00,
                    label="day", progress=report,
                )
        finally:
            await hsm.close()
    finally:
        await store.close()

    async with running_engine(settings) as running:
        _phase(f"engine on 127.0.0.1:{running.port}: playing the day's situations")
        await _play_scenarios(day, "127.0.0.1", running.port, people, terminals, running.store)
        _phase(f"load: {connections} connections for {seconds:g} s, then every terminal closes its batch")
        with ProgressDisplay(_ERR) as display:
            day.load = await run_load(
                "127.0.0.1",
                running.port,
                [PosTerminal.from_registered(t) for t in crowd.terminals],
                [CardData.from_issued(c, c["pin"]) for c in crowd.cards],
                connections=connections,
                seconds=seconds,
                seed=20261125,
                close_batches=True,
                progress=display,
            )
        store = running.store
        _phase("an acquiring network's day and clearing file, then settling the day")
        day.settlement = await _settle_the_day(running, people, workdir)
        _phase("checking the ledger")
        day.ledger_failures = await ledger.invariants.check(store)
        day.ledger_report = await ledger.invariants.report(store)
        for handle in ("ada", "bob", "grace"):
            view = await ledger.accounts.get(store, people[handle]["account_id"])
            day.balances[handle] = {
                "ledger_minor": view.ledger_minor,
                "available_minor": view.available_minor,
                "holds": len(view.holds),
            }
    log_handler.flush()
    return day


async def _settle_the_day(running: RunningEngine, people: dict[str, dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """End of day: an acquiring network's authorizations and clearing file, then settlement and its report.

    The demo's day ends now: its cutoff is set to the next second (UTC), so everything played above falls
    in the day that is settled.
    """
    from processor.settlement import add_network, add_network_merchant, build_report, save_config, settle_day, write_html
    from processor.settlement.day import COMMIT_GRACE
    from processor.settlement.ingest import ingest_file
    from terminal_sim.network import AcquiringNetwork

    store, hsm = running.store, running.hsm
    key = await add_network(store, hsm, running.engine.keys, "400001", "EuroNet")
    network = AcquiringNetwork("400001", key, merchants=3)
    for merchant in network.registrations():
        await add_network_merchant(store, "400001", **merchant)
    cards = [CardData.from_issued(people[h], "1234") for h in ("ada", "grace")]
    async with await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0) as conn:
        network_day = await network.run(conn, cards, 12)
    now = dt.datetime.now(dt.UTC)
    cutoff = now + dt.timedelta(seconds=1)
    config = await save_config(store, cutoff=cutoff.strftime("%H:%M:%S"), timezone="UTC")
    business_day = config.calendar.day_of(now)
    clearing = workdir / "clearing" / "euronet.ipm"
    written = network.write_clearing_file(
        network_day, clearing, file_id=f"EURONET-{business_day:%Y%m%d}", business_date=business_day, scenarios=True
    )
    ingested = await ingest_file(store, hsm, clearing, config, now=now)
    end = config.calendar.window(business_day)[1]
    await asyncio.sleep(max(0.0, (end - dt.datetime.now(dt.UTC)).total_seconds()))
    summary = await settle_day(store, business_day, config, out_dir=workdir / "settlement", now=end + COMMIT_GRACE)
    report = await build_report(store, business_day)
    html = write_html(report, workdir / "settlement" / f"report-{business_day}.html")
    return {
        "business_date": business_day.isoformat(),
        "network": network_day.as_json(),
        "clearing_file": written["path"],
        "ingested": {k: ingested[k] for k in ("records", "by_status", "posted", "exceptions")},
        "merchants": len(summary["merchants"]),
        "items": summary["items"],
        "totals": summary["totals"],
        "networks": summary["networks"],
        "exceptions": summary["exceptions"],
        "files": {name: f["path"] for name, f in summary["files"].items()},
        "report": html,
    }


def _log_to(path: Path) -> logging.Handler:
    from processor.logs import configure

    return configure(path)


def summarize(day: Day) -> dict[str, Any]:
    """The day as one JSON-able document."""
    codes: Counter[str] = Counter(s.got.split(" ")[0] for s in day.scenarios)  # "00 TC" counts as 00
    load = day.load.summary() if day.load else {}
    for code, count in load.get("codes", {}).items():
        codes[code] += count
    return {
        "workdir": str(day.workdir),
        "ok": all(s.ok for s in day.scenarios) and not day.ledger_failures and _load_batches_balanced(load),
        "scenarios": [
            {"name": s.name, "expected": s.expected, "got": s.got, "ok": s.ok, **({"detail": s.detail} if s.detail else {})}
            for s in day.scenarios
        ],
        "codes": dict(sorted(codes.items())),
        "load": load,
        "balances": day.balances,
        "ledger": {"ok": not day.ledger_failures, "failures": day.ledger_failures, "report": day.ledger_report},
        "settlement": day.settlement,
        "elapsed_s": round(time.perf_counter() - day.started, 1),
    }


def _load_batches_balanced(load: dict[str, Any]) -> bool:
    batches = load.get("batches")
    return batches is None or batches["in_balance"] == batches["closed"] and not batches["not_in_balance"]


def print_day(summary: dict[str, Any], out: Any = sys.stdout) -> None:
    from processor.iso8583 import rc

    print(f"Business day in {summary['workdir']}", file=out)
    print("\nScenarios", file=out)
    for s in summary["scenarios"]:
        mark = "ok " if s["ok"] else "BAD"
        detail = f"  ({s['detail']})" if s.get("detail") else ""
        print(f"  [{mark}] {s['name']:<52} expected {s['expected']:<6} got {s['got']}{detail}", file=out)
    load = summary["load"]
    if load:
        print(
            f"\nLoad: {load['count']} authorizations in {load['seconds']} s over {load['connections']} connections: "
            f"{load['tps']}/s, latency p50 {load['p50_ms']} ms, p95 {load['p95_ms']} ms, p99 {load['p99_ms']} ms",
            file=out,
        )
        if load.get("batches"):
            b = load["batches"]
            print(
                f"End of day: {b['closed']} terminal batches closed, {b['in_balance']} in balance with the issuer "
                f"({b['debits_count']} debits {b['debits_minor'] / 100:.2f} EUR, "
                f"{b['credits_count']} credits {b['credits_minor'] / 100:.2f} EUR)",
                file=out,
            )
    print("\nResponse codes", file=out)
    for code, count in summary["codes"].items():
        print(f"  {code:<3} {rc.describe(code):<36} {count:7d}", file=out)
    print("\nBalances", file=out)
    for handle, b in summary["balances"].items():
        print(
            f"  {handle:<8} ledger {b['ledger_minor'] / 100:10.2f} EUR  available {b['available_minor'] / 100:10.2f} EUR  holds {b['holds']}",
            file=out,
        )
    ledger_check = summary["ledger"]
    print(f"\nLedger check: {'OK' if ledger_check['ok'] else 'BROKEN'}", file=out)
    for failure in ledger_check["failures"]:
        print(f"  {failure}", file=out)
    settled = summary.get("settlement") or {}
    if settled:
        print(f"\nSettlement of business day {settled['business_date']}: {settled['items']} transactions, "
              f"{settled['merchants']} merchants paid; network {settled['network']['approved']} authorizations, "
              f"clearing file {settled['ingested']['records']} presentments ({settled['ingested']['posted']} posted)", file=out)
        for kind, n in sorted(settled["exceptions"].items()):
            print(f"  exception {kind}: {n}", file=out)
        for name, path in settled["files"].items():
            print(f"  {name}: {path}", file=out)
        print(f"  report: {settled['report']}", file=out)
    verdict = "every scenario answered as expected" if summary["ok"] else "SOMETHING WENT WRONG (see above)"
    print(f"\nDay finished in {summary['elapsed_s']} s: {verdict}.", file=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description="Run a whole simulated business day and print its summary.")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    parser.add_argument("--workdir", help="where the day's database, key store and logs go (default: a new folder)")
    parser.add_argument("--cardholders", type=int, default=40, help="customers of the load phase (default 40)")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long the load phase runs (default 8)")
    parser.add_argument("--connections", type=int, default=16, help="terminal connections of the load phase (default 16)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m demo`: exit 0 when every answer is what an issuer must answer."""
    from processor.logs import quiet_library_deprecations

    quiet_library_deprecations()
    os.umask(0o077)  # the day's database, key store, logs and bureau records hold card and key data
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="processor-day-"))
    try:
        import uvloop

        day = uvloop.run(run_day(workdir, cardholders=args.cardholders, seconds=args.seconds, connections=args.connections))
    except ImportError:
        day = asyncio.run(run_day(workdir, cardholders=args.cardholders, seconds=args.seconds, connections=args.connections))
    summary = summarize(day)
    if args.json:
        print(json.dumps(summary))
    else:
        print_day(summary)
    return 0 if summary["ok"] else 1
