"""The attacks of a hostile terminal, replayed over TCP against a running `processor serve` process.

Each one must end in a clear refusal with nothing changed: a card number alone, a spoofed terminal, a
replayed or lifted PIN block, a forged MAC, thirty wrong PINs at once, a huge credit, a stand-in advice
above the floor limit, a reversal of another terminal's sale, a response sent as a request, and a flood of
idle connections.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import build_issuer, more_terminals
from sqlalchemy import func, select

from processor import issuing, ledger
from processor.config import Settings
from processor.iso8583 import decode, encode, encode_frame
from processor.ledger import Store, invariants
from processor.ledger.models import auths
from terminal_sim.iso_client import TerminalConnection
from terminal_sim.pos import CardData, PosTerminal


@dataclass
class Served:
    """A `processor serve` process on its own database and HSM, with the issuer's cards and terminals."""

    settings: Settings
    port: int
    cards: dict[str, CardData]
    accounts: dict[str, int]
    terminals: dict[str, PosTerminal]
    store: Store

    async def connect(self, *terminals: PosTerminal) -> TerminalConnection:
        return await TerminalConnection.connect("127.0.0.1", self.port, timeout_s=15.0, terminals=list(terminals))

    async def balances(self, name: str) -> tuple[int, int]:
        view = await ledger.accounts.get(self.store, self.accounts[name])
        return view.ledger_minor, view.available_minor


async def _count(store: Store) -> int:
    """How many requests the store recorded."""
    return await store.run_query(lambda conn: conn.execute(select(func.count()).select_from(auths)).scalar_one())


@pytest.fixture
async def served(db_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    settings = Settings(db_url=db_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    cards, accounts, terminals = await build_issuer(settings)
    env = {**os.environ, "PROCESSOR_DB_URL": db_url, "PROCESSOR_HSM_URL": settings.hsm_url,
           "PROCESSOR_LOG_FILE": str(tmp_path / "engine.log")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli", "serve", "--tcp", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=tmp_path,
    )
    store = await Store.open(db_url)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert found, f"processor serve did not start: {line!r}"
        yield Served(settings, int(found.group(1)), cards, accounts, terminals, store)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await store.close()
    assert proc.returncode == 0 or proc.returncode == -15


async def _closed(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout=timeout_s) == b""
    except ConnectionError:
        return True


async def test_no_approval_without_proof_identity_or_a_fresh_key(served: Served) -> None:
    shop, market, ada = served.terminals["shop"], served.terminals["market"], served.cards["ada"]
    conn = await served.connect(shop, market)
    stranger = await served.connect()
    try:
        # A card number alone, under every DE 22 value and none: declined, nothing held.
        for mode in [f"{n:02d}" for n in range(100)] + [None]:
            bare = shop.card_request(ada, 5_00, entry="manual")
            bare.pop("48", None)
            if mode is None:
                bare.pop("22")
            else:
                bare["22"] = mode + "1"
            assert (await conn.request(bare))["39"] not in ("00", "10"), mode
        assert await served.balances("ada") == (500_00, 500_00)
        before = await _count(served.store)

        # A terminal posing as another: its own key under the other's DE 41 and DE 42, or an unregistered one.
        spoofed = market.card_request(ada, 5_00, entry="manual", cvv2=ada.cvv2)
        payload, _ = shop.sign(spoofed)
        raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", served.port)
        raw_writer.write(encode_frame(payload))
        answer = await _read(raw_reader)
        assert answer["39"] == "63"
        ghost = shop.card_request(ada, 5_00)
        ghost["41"] = "GHOST001"
        assert (await stranger.request(ghost))["39"] == "03"
        unsigned = shop.card_request(ada, 5_00)
        assert (await stranger.request(unsigned))["39"] == "63"

        # A forged MAC: one bit of DE 64 flipped.
        payload, _ = shop.sign(shop.card_request(ada, 5_00))
        raw_writer.write(encode_frame(payload[:-1] + bytes([payload[-1] ^ 1])))
        assert (await _read(raw_reader))["39"] == "63"
        raw_writer.close()
        assert await _count(served.store) == before, "nothing is recorded for a message that is not the terminal's"

        # A captured PIN purchase sent again: its first answer, no second debit. Its PIN block and KSN lifted
        # into a new request: the MAC cannot be made without the terminal's key.
        with_pin = shop.card_request(ada, 7_00, with_pin=True)
        captured, _ = shop.sign(with_pin)
        first = await conn.request(with_pin)
        assert first["39"] == "00"
        replay_reader, replay_writer = await asyncio.open_connection("127.0.0.1", served.port)
        replay_writer.write(encode_frame(captured))
        again = await _read(replay_reader)
        assert (again["39"], again.get("38")) == ("00", first.get("38"))
        lifted = shop.card_request(ada, 900_00)
        lifted.update({"52": with_pin["52"], "53": with_pin["53"], "64": captured[-8:].hex().upper()})
        replay_writer.write(encode_frame(encode(lifted)))
        assert (await _read(replay_reader))["39"] == "63"
        replay_writer.close()
        assert await served.balances("ada") == (493_00, 493_00)
    finally:
        await conn.close()
        await stranger.close()


async def test_thirty_wrong_pins_at_once_lock_the_card(served: Served) -> None:
    grace = served.cards["grace"]
    pads = await more_terminals(served.settings, 30, merchant_id=served.terminals["shop"].merchant_id)
    conns = [await served.connect(pad) for pad in pads]
    try:
        answers = await asyncio.gather(*(
            c.request(p.card_request(grace, 1_00, with_pin=True, pin="9999")) for c, p in zip(conns, pads)
        ))
        codes = sorted(a["39"] for a in answers)
        assert codes.count("55") <= 2 and set(codes) <= {"55", "75"}, codes
        right = await conns[0].request(pads[0].card_request(grace, 1_00, with_pin=True))
        assert right["39"] == "75", "the right PIN comes too late: the card is blocked"
    finally:
        for c in conns:
            await c.close()
    card = await issuing.cards.get(served.store, grace.card_id)
    assert card.pin_tries >= 3
    assert await served.balances("grace") == (300_00, 300_00)


async def test_no_money_from_nowhere(served: Served) -> None:
    shop, market, ivan, ada = served.terminals["shop"], served.terminals["market"], served.cards["ivan"], served.cards["ada"]
    conn = await served.connect(shop, market)
    try:
        # The market's sale cannot be reversed by the shop: DE 90 names only the shop's own requests.
        sale = market.card_request(ada, 20_00, entry="manual", cvv2=ada.cvv2)
        assert (await conn.request(sale))["39"] == "00"
        foreign = shop.reversal(sale)
        assert (await conn.request(foreign))["39"] == "25"
        assert await served.balances("ada") == (480_00, 480_00)
        assert (await conn.request(market.reversal(sale, remaining_minor=25_00)))["39"] == "13"
        assert (await conn.request(market.reversal(sale)))["39"] == "00"
        assert await served.balances("ada") == (500_00, 500_00)

        credit = lambda t, amount: t.card_request(ivan, amount, processing_code="200000")  # noqa: E731
        assert (await conn.request(credit(shop, 999_999_999_999)))["39"] == "13"
        assert (await conn.request(credit(shop, 9_999_999_99)))["39"] == "61"
        assert (await conn.request(shop.card_request(ivan, 5_000_00, mti="0120")))["39"] == "05"
        assert (await conn.request(shop.card_request(ivan, 10_00, mti="0120", processing_code="200000")))["39"] == "05"
        assert await served.balances("ivan") == (200_00, 200_00)
    finally:
        await conn.close()
    assert await invariants.check(served.store) == []


async def test_unreadable_frames_and_idle_floods_do_not_stop_a_real_terminal(served: Served) -> None:
    shop, ada = served.terminals["shop"], served.cards["ada"]
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    answer_as_request = {**shop.card_request(ada, 1_00), "t": "0110"}
    writer.write(encode_frame(encode(answer_as_request)))
    assert await _closed(reader), "a response sent as a request is dropped and the connection closed"
    writer.close()

    flood = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(600)]
    try:
        conn = await served.connect(shop)
        try:
            answer = await conn.request(shop.card_request(ada, 1_00))
            assert answer["39"] == "00" and answer["_authentic"]
        finally:
            await conn.close()
    finally:
        for _, w in flood:
            w.close()


async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
    header = await asyncio.wait_for(reader.readexactly(2), timeout=15.0)
    return decode(await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), timeout=15.0))
