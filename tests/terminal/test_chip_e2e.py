"""Chip and contactless transactions end to end: bureau record -> virtual card -> terminal -> engine -> card.

Each test gets its own issuer on SQLite (in-process HSM with a key-store file), cards personalized for
the bureau under a transport key formed in a key ceremony, and an engine on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import connect
from processor import issuing, ledger
from processor.config import Settings
from processor.issuing import ensure_issuer_keys, issue_card
from processor.issuing.personalization import form_bureau_key, personalize
from processor.issuing.terminals import add_terminal
from processor.iso8583.messages import parse_track2
from processor.ledger import Store
from processor.server import running_engine
from processor.iso8583 import decode_tlv
from terminal_sim.bureau import BureauError, chip_track2, load_profile, state_path, transport_key_from_components
from terminal_sim.chip_pos import ChipCard, chip_transaction
from terminal_sim.emv.card import GarbageCard, GarbageMode, VirtualCard
from terminal_sim.emv.kernel import CardError
from terminal_sim.iso_client import TerminalConnection
from terminal_sim.nfc import ContactlessTerminal, PinRequired
from terminal_sim.pcsc import PcscError
from terminal_sim.pos import PosTerminal

pytestmark = pytest.mark.filterwarnings("ignore:.*TripleDES.*")

DEPOSIT = 500_00
PIN = "1234"


@dataclass
class ChipIssuer:
    settings: Settings
    bureau: Path
    transport_key: bytes
    card_ids: dict[str, int]
    account_ids: dict[str, int]
    terminals: dict[str, PosTerminal]
    store: Any
    port: int
    conn: TerminalConnection

    def profile(self, name: str, *, contactless: bool = False):
        return load_profile(self.bureau, self.card_ids[name], self.transport_key, contactless=contactless)

    async def available(self, name: str) -> int:
        return (await ledger.accounts.get(self.store, self.account_ids[name])).available_minor

    async def ledger(self, name: str) -> int:
        return (await ledger.accounts.get(self.store, self.account_ids[name])).ledger_minor

    async def connect(self) -> TerminalConnection:
        return await TerminalConnection.connect("127.0.0.1", self.port, timeout_s=5.0)


async def _build(settings: Settings, bureau: Path) -> tuple[bytes, dict[str, int], dict[str, int], dict[str, PosTerminal]]:
    store = await Store.open(settings.db_url)
    hsm = await connect(settings.hsm_url)
    try:
        keys = await ensure_issuer_keys(store, hsm)
        ceremony = await form_bureau_key(store, hsm)
        transport_key = transport_key_from_components(ceremony["components"])
        card_ids, account_ids = {}, {}
        for name, cvn in (("ada", 18), ("bob", 10)):
            holder = await issuing.cardholders.create(store, name.title(), f"{name}-chip")
            account = await ledger.accounts.open_account(store, holder, "checking", "EUR")
            await ledger.accounts.deposit(store, account, DEPOSIT, reference="test funding")
            issued = await issue_card(store, hsm, keys, account_id=account, pin=PIN, today=dt.date.today())
            await personalize(store, hsm, keys, issued.id, directory=bureau, cvn=cvn)
            card_ids[name], account_ids[name] = issued.id, account
        terminals = {}
        for name, tid, mid in (("shop", "CHIP0001", "CHIPSHOP0000001"), ("other", "CHIP0002", "CHIPSHOP0000002")):
            registered = await add_terminal(store, hsm, keys, terminal_id=tid, merchant_id=mid, mcc="5411")
            terminals[name] = PosTerminal.from_registered(registered.as_json())
        return transport_key, card_ids, account_ids, terminals
    finally:
        await hsm.close()
        await store.close()


@pytest.fixture
async def chip_issuer(sqlite_url: str, tmp_path: Path) -> AsyncIterator[ChipIssuer]:
    settings = Settings(db_url=sqlite_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    bureau = tmp_path / "bureau"
    transport_key, card_ids, account_ids, terminals = await _build(settings, bureau)
    async with running_engine(settings) as running:
        conn = await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0)
        try:
            yield ChipIssuer(settings, bureau, transport_key, card_ids, account_ids, terminals, running.store,
                             running.port, conn)
        finally:
            await conn.close()


# ---------------------------------------------------------------- bureau records


async def test_bureau_record_opens_only_with_the_ceremony_key(chip_issuer):
    profile = chip_issuer.profile("ada")
    record_text = (chip_issuer.bureau / f"card-{chip_issuer.card_ids['ada']}.json").read_text()
    assert profile.pan not in record_text
    assert profile.cvn == 18 and not profile.contactless
    # The chip's track 2 carries the iCVV where the engine reads a CVV (discretionary data [5:8]).
    assert profile.track2.startswith(profile.pan + "D" + profile.expiry + "201" + "10000")
    assert len(profile.track2) == 37
    with pytest.raises(BureauError, match="transport key"):
        load_profile(chip_issuer.bureau, chip_issuer.card_ids["ada"], bytes(32))


@settings(max_examples=200, deadline=None)
@given(
    pan=st.from_regex(r"4[0-9]{11,18}", fullmatch=True),
    expiry=st.from_regex(r"[0-9]{2}(0[1-9]|1[0-2])", fullmatch=True),
    icvv=st.from_regex(r"[0-9]{3}", fullmatch=True),
)
def test_chip_track2_puts_the_icvv_where_the_engine_reads_it(pan, expiry, icvv):
    track2 = chip_track2(pan, expiry, "201", icvv)
    assert len(track2) <= 37 and track2.count("D") == 1
    parsed = parse_track2(track2.replace("D", "="))
    assert (parsed.pan, parsed.expiry, parsed.service_code, parsed.cvv) == (pan, expiry, "201", icvv)


# ---------------------------------------------------------------- approvals


async def test_contact_chip_with_online_pin_approved_with_tc_after_arpc(chip_issuer):
    shop = chip_issuer.terminals["shop"]
    card = VirtualCard(chip_issuer.profile("ada"), state_path(chip_issuer.bureau, chip_issuer.card_ids["ada"]))
    result = await chip_transaction(chip_issuer.conn, shop, card.process_apdu, 12_34, contactless=False, pin=PIN)
    assert (result.rc, result.cryptogram, result.approved) == ("00", "TC", True)
    assert len(result.approval_code) == 6
    assert result.atc == 1 and card.atc == 1
    assert result.request["22"] == "051" and result.request["23"] == "000" and "52" in result.request
    assert await chip_issuer.ledger("ada") == DEPOSIT - 12_34
    # The ATC survives the card leaving the reader.
    again = VirtualCard(chip_issuer.profile("ada"), state_path(chip_issuer.bureau, chip_issuer.card_ids["ada"]))
    assert again.atc == 1


async def test_contactless_approved_below_the_limit_and_pin_asked_above(chip_issuer):
    nfc = ContactlessTerminal(chip_issuer.terminals["shop"], limit_minor=50_00)
    chip = ChipCard(chip_issuer.profile("bob"))  # CVN 10
    card = chip.insert(contactless=True)
    result = await nfc.tap(chip_issuer.conn, card.process_apdu, 25_00)
    chip.remove(card)
    assert (result.rc, result.cryptogram, result.approved) == ("00", "TC", True)
    assert result.request["22"] == "071" and "52" not in result.request
    card = chip.insert(contactless=True)
    with pytest.raises(PinRequired):
        await nfc.tap(chip_issuer.conn, card.process_apdu, 60_00)
    result = await nfc.tap(chip_issuer.conn, chip.insert(contactless=True).process_apdu, 60_00, pin=PIN)
    assert (result.rc, result.approved) == ("00", True)
    assert "52" in result.request
    assert await chip_issuer.ledger("bob") == DEPOSIT - 25_00 - 60_00


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("mode", [GarbageMode.MALFORMED_GPO, GarbageMode.NO_CRYPTOGRAM, GarbageMode.SHORT_RESPONSE])
async def test_card_answering_garbage_is_refused_and_nothing_is_held(chip_issuer, mode):
    garbage = GarbageCard(chip_issuer.profile("ada"), mode)
    with pytest.raises(CardError):
        await chip_transaction(chip_issuer.conn, chip_issuer.terminals["shop"], garbage.process_apdu, 10_00,
                               contactless=False, pin=PIN)
    assert await chip_issuer.available("ada") == DEPOSIT


async def test_wrong_arqc_declined_82_and_nothing_held(chip_issuer):
    card = VirtualCard(chip_issuer.profile("ada"))

    def tamper(read):
        arqc = bytearray(read.icc_tags["9F26"])
        arqc[0] ^= 0x01
        read.icc_tags["9F26"] = bytes(arqc)

    result = await chip_transaction(chip_issuer.conn, chip_issuer.terminals["shop"], card.process_apdu, 10_00,
                                    contactless=False, on_read=tamper)
    assert (result.rc, result.cryptogram, result.approved) == ("82", "AAC", False)
    assert await chip_issuer.available("ada") == DEPOSIT


async def test_replayed_atc_declined_82(chip_issuer):
    """The same DE 55 under a new STAN: the engine's ATC replay detection declines it."""
    shop = chip_issuer.terminals["shop"]
    card = VirtualCard(chip_issuer.profile("ada"))
    first = await chip_transaction(chip_issuer.conn, shop, card.process_apdu, 10_00, contactless=False)
    assert first.approved
    replay = dict(first.request)
    fresh = shop.card_request(  # a new STAN and time; the card's cryptogram and ATC copied
        _card_of(first.request), 10_00, entry="chip", icc=first.request["55"]
    )
    replay.update({k: fresh[k] for k in ("7", "11", "12", "13", "37")})
    answer = await chip_issuer.conn.request(replay)
    assert answer["39"] == "82"
    assert await chip_issuer.available("ada") == DEPOSIT - 10_00


def _card_of(request: dict[str, Any]):
    from terminal_sim.pos import CardData

    t2 = request["35"]
    pan = t2.split("=")[0]
    return CardData(pan=pan, expiry=t2.split("=")[1][:4], track2=t2, cvv2="", chip_track2=t2)


async def test_a_terminal_with_the_wrong_key_is_refused_63_and_the_try_counter_unchanged(chip_issuer):
    shop, other = chip_issuer.terminals["shop"], chip_issuer.terminals["other"]
    # The shop's identity and KSN, but the other terminal's initial key injected: its MAC does not verify,
    # so nothing in the request is trusted, its PIN block included.
    wrong = replace(shop, ipek=other.ipek)
    card = VirtualCard(chip_issuer.profile("ada"))
    result = await chip_transaction(chip_issuer.conn, wrong, card.process_apdu, 10_00, contactless=False, pin=PIN)
    assert (result.rc, result.cryptogram) == ("63", "AAC")
    assert "55" not in result.answer and not result.answer["_authentic"]
    assert (await issuing.cards.get(chip_issuer.store, chip_issuer.card_ids["ada"])).pin_tries == 0
    assert await chip_issuer.available("ada") == DEPOSIT


async def test_terminal_disconnected_mid_transaction_reverses_and_leaves_no_hold(chip_issuer):
    """The answer is lost when the connection drops; the terminal reconnects and reverses."""
    async with _DroppingProxy(chip_issuer.port) as proxy:
        conn = await TerminalConnection.connect("127.0.0.1", proxy.port, timeout_s=5.0)
        card = VirtualCard(chip_issuer.profile("ada"))
        try:
            result = await chip_transaction(conn, chip_issuer.terminals["shop"], card.process_apdu, 40_00,
                                            contactless=False, pin=PIN, mti="0100", reconnect=chip_issuer.connect)
        finally:
            await conn.close()
        assert proxy.answers_dropped == 1
    assert result.rc is None and result.reversed and result.cryptogram == "AAC"
    view = await ledger.accounts.get(chip_issuer.store, chip_issuer.account_ids["ada"])
    assert (view.available_minor, view.ledger_minor, view.held_minor) == (DEPOSIT, DEPOSIT, 0)
    # The engine did place the hold (its answer was lost on the way), and the reversal released it.
    assert [(h.amount_minor, h.status) for h in view.holds if h.status == "active"] == []


async def test_unanswered_request_is_reversed_after_the_timeout(chip_issuer):
    async with _DroppingProxy(chip_issuer.port, close=False) as proxy:
        conn = await TerminalConnection.connect("127.0.0.1", proxy.port, timeout_s=5.0)
        card = VirtualCard(chip_issuer.profile("ada"))
        try:
            result = await chip_transaction(conn, chip_issuer.terminals["shop"], card.process_apdu, 30_00,
                                            contactless=False, mti="0100", timeout_s=0.5)
        finally:
            await conn.close()
    assert result.rc is None and result.reversed
    assert await chip_issuer.available("ada") == DEPOSIT


async def test_card_pulled_out_after_the_approval_is_reversed(chip_issuer):
    """Approved online, but the card leaves the reader before the second GENERATE AC: no TC, so reverse."""
    card = VirtualCard(chip_issuer.profile("ada"))
    generate_acs = 0

    def transmit(apdu: bytes) -> bytes:
        nonlocal generate_acs
        if apdu[1] == 0xAE:
            generate_acs += 1
            if generate_acs == 2:
                raise PcscError("reader 'Virtual PCD 00 00': transmit of INS AE failed: card removed")
        return card.process_apdu(apdu)

    result = await chip_transaction(chip_issuer.conn, chip_issuer.terminals["shop"], transmit, 20_00,
                                    contactless=False, pin=PIN, mti="0100")
    assert (result.rc, result.cryptogram, result.reversed, result.approved) == ("00", "AAC", True, False)
    view = await ledger.accounts.get(chip_issuer.store, chip_issuer.account_ids["ada"])
    assert (view.available_minor, view.held_minor) == (DEPOSIT, 0)


class _DroppingProxy:
    """A loopback hop that loses the engine's first answer: closing the terminal's connection, or just silent."""

    def __init__(self, engine_port: int, *, close: bool = True) -> None:
        self.engine_port = engine_port
        self.close = close
        self.answers_dropped = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> "_DroppingProxy":
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.engine_port)

        async def pump_up() -> None:
            with contextlib.suppress(Exception):
                while chunk := await reader.read(65536):
                    up_writer.write(chunk)
                    await up_writer.drain()

        async def pump_down() -> None:
            with contextlib.suppress(Exception):
                while True:
                    header = await up_reader.readexactly(2)
                    payload = await up_reader.readexactly(int.from_bytes(header, "big"))
                    if self.answers_dropped == 0:
                        self.answers_dropped += 1
                        if self.close:
                            writer.close()
                            return
                        continue
                    writer.write(header + payload)
                    await writer.drain()

        tasks = [asyncio.create_task(pump_up()), asyncio.create_task(pump_down())]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            up_writer.close()
            writer.close()


# ---------------------------------------------------------------- load


async def test_load_mixes_chip_and_contactless_and_reports_per_kind(chip_issuer):
    from terminal_sim.load import run_load

    chips = [ChipCard(chip_issuer.profile(name), pin=PIN) for name in ("ada", "bob")]
    terminals = list(chip_issuer.terminals.values())
    result = await run_load("127.0.0.1", chip_issuer.port, terminals, [], connections=4, seconds=1.0,
                            mix={"chip": 1, "contactless": 1}, chip_cards=chips, seed=7, close_batches=True)
    summary = result.summary()
    assert set(summary["by_kind"]) == {"chip", "contactless"}
    # Four connections share two cards; a card is in one terminal at a time, so its ATCs reach the engine
    # in order and none is declined as a replay (82). The accounts run dry within the second (51).
    assert set(summary["codes"]) <= {"00", "51"} and summary["codes"].get("00", 0) > 10
    assert (summary["timeouts"], summary["errors"], summary["reversals"]) == (0, 0, 0)
    assert sum(c.atc for c in chips) == summary["count"]
    approved = summary["codes"]["00"]
    spent = 2 * DEPOSIT - await chip_issuer.ledger("ada") - await chip_issuer.ledger("bob")
    assert 100 * approved <= spent <= 2_000 * approved
    # At the end each terminal closed its batch: every approval is counted once, on both sides.
    batches = summary["batches"]
    assert batches["closed"] == batches["in_balance"] == len(terminals) and not batches["not_in_balance"]
    assert batches["debits_count"] == approved and batches["debits_minor"] == spent


def test_load_refuses_chip_kinds_without_bureau_records():
    from terminal_sim.load import Workload
    from terminal_sim.pos import CardData

    card = CardData(pan="4761739001010010", expiry="3012", track2="4761739001010010=30122010000000000", cvv2="123")
    with pytest.raises(ValueError, match="bureau records"):
        Workload([card], {"purchase": 1, "chip": 1})


async def test_load_command_reads_bureau_records_and_keeps_card_counters(chip_issuer, tmp_path):
    import json
    import os
    import sys

    from terminal_sim.bureau import TRANSPORT_KEY_ENV

    cards = tmp_path / "cards.json"
    cards.write_text(json.dumps([{"id": cid, "pin": PIN, "pan": "0", "expiry": "0", "track2": "0", "cvv2": "0"}
                                 for cid in chip_issuer.card_ids.values()]))
    terminals = tmp_path / "terminals.json"
    terminals.write_text(json.dumps([{"terminal_id": t.terminal_id, "merchant_id": t.merchant_id, "ipek": t.ipek,
                                      "initial_ksn": t.initial_ksn} for t in chip_issuer.terminals.values()]))
    env = dict(os.environ, PYTHONWARNINGS="ignore", **{TRANSPORT_KEY_ENV: chip_issuer.transport_key.hex()})
    summaries = []
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "terminal_sim.cli", "load", "--tcp", f"127.0.0.1:{chip_issuer.port}",
            "--cards", str(cards), "--terminals", str(terminals), "--bureau-dir", str(chip_issuer.bureau),
            "--mix", "chip=1,contactless=1", "--connections", "2", "--seconds", "0.5", "--json", "--quiet",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode(errors="replace")
        summaries.append(json.loads(out))
    # The second run continues each card's ATC where the first stopped: no replay declines (82).
    for summary in summaries:
        assert set(summary["by_kind"]) == {"chip", "contactless"}
        assert set(summary["codes"]) <= {"00", "51"}
    atcs = [json.loads(state_path(chip_issuer.bureau, cid).read_text())["atc"] for cid in chip_issuer.card_ids.values()]
    assert sum(atcs) == sum(s["count"] for s in summaries)
